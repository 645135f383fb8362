"""Ray start-up and per-worker settings shared by every stage."""

from __future__ import annotations

import logging
import os
import time

import ray
import ray.data
from .ray_internals import (WORKER_SETUP, drop_actor_args_notice, execution_callback, quiet_token_notice, quiet_worker,
                            topology)
from .sections import RayConfig


def init_ray(cfg: RayConfig, address: str | None = None) -> None:
    """Connect to a cluster, or start an embedded one that stays on 127.0.0.1."""
    if ray.is_initialized():  # a test's or a notebook's Ray: this job's data settings all the same
        configure_data(cfg)
        return
    # A driver started by the Jobs API (`ray job submit`) finds its cluster's GCS in RAY_ADDRESS; an
    # http:// RAY_ADDRESS is a Jobs API address for `ragworks submit`, not one to connect to.
    env = os.environ.get("RAY_ADDRESS", "")
    address = address or cfg.address or (env if env and not env.startswith(("http://", "https://")) else None)
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    # Worker output reaches the driver's console: no per-actor weight-loading bars, no Lance INFO/WARN
    # lines about creating a table (workers started by this Ray inherit these)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("LANCE_LOG", "error")
    os.environ.setdefault("LANCEDB_LOG", "error")  # read once, at its import: a stage may import it before search.py
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": always a Ray of its own, even beside a cluster started on this machine with `ray start`.
        quiet_token_notice()
        quiet_worker()
        ray.init(address="local", num_cpus=cfg.num_cpus, dashboard_host=cfg.dashboard_host, include_dashboard=False,
                 runtime_env=WORKER_SETUP, **kwargs)
    from .progress import STAGE

    if not STAGE["verbose"]:
        drop_actor_args_notice()
    configure_data(cfg)  # after ray.init: it reads the cluster's CPUs


def configure_data(cfg: RayConfig) -> None:
    """This driver's Ray Data settings (Ray Train hands them to its workers and split coordinators)."""
    ctx = ray.data.DataContext.get_current()
    # No global preserve_order: where an order matters, rows carry a key for it (ordering.py).
    ctx.use_datasource_v2 = cfg.parquet_reader == "v2"
    # Ray's 200 read tasks at least, meant for large clusters, made a read of 160 small files (a corpus's
    # parts) 160 tasks: 10-12 s on 2 cores, against 0.8-1.7 s as 4 tasks (the same rows). A large read is
    # still split by size (target_max_block_size).
    cpus = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else os.cpu_count() or 1
    ctx.read_op_min_num_blocks = cfg.read_blocks or max(4, 2 * int(cpus))
    if IdleBackoff not in ctx.custom_execution_callback_classes:
        ctx.custom_execution_callback_classes.append(IdleBackoff)


IDLE_BACKOFF_S = 0.05


class IdleBackoff(execution_callback()):
    """Sleeps a Ray Data execution loop step that had no task to wait on.

    Ray Data's scheduling loop blocks in `ray.wait` on its running tasks; with none running it returns at
    once and loops again. A training split has none for most of an epoch (its blocks are made, or held
    back by the resource budget, while the trainer consumes them), so Ray Train's split coordinator
    spun a whole core beside the trainer: train_retriever on the flagship stepped at 45-50 s on 2 cores,
    27-29 s with this callback. A step that finds nothing running now waits IDLE_BACKOFF_S (a block's
    latency at most, against tasks that take a second or more).
    """

    def on_execution_step(self, executor) -> None:
        if not any(op.get_active_tasks() for op in topology(executor)):
            time.sleep(IDLE_BACKOFF_S)


def actor_pool(concurrency: tuple[int, int], num_cpus: float, num_gpus: float = 0.0,
               resources: dict[str, float] | None = None, start_all: bool = False) -> dict:
    """map_batches kwargs for an autoscaling actor pool: (min, max) actors, each with what it declares.

    Custom resources pin the actors to the nodes that advertise them; on an
    autoscaling cluster, a pending actor that needs them makes the autoscaler add such a node.
    `start_all`: start `max` actors at once (then the pool may shrink to `min`), for a pool that is cheap to
    start and has its whole input waiting: on a small machine Ray Data's resource allocator can keep an
    operator at its first actor while upstream tasks hold CPU slots (one chunker of two at 1M documents).
    """
    from ray.data import ActorPoolStrategy

    lo, hi = concurrency
    return {"compute": ActorPoolStrategy(min_size=lo, max_size=hi, initial_size=hi if start_all else None),
            "num_cpus": num_cpus,
            "num_gpus": num_gpus or None, "resources": dict(resources) if resources else None}


def assigned_cpus(default: int = 1) -> int:
    """CPUs Ray gave this worker (at least one); the driver gets the machine's count."""
    try:
        ctx = ray.get_runtime_context() if ray.is_initialized() else None  # asking would start a Ray
        if ctx is not None and ctx.worker.mode == ray.WORKER_MODE:
            cpus = ctx.get_assigned_resources().get("CPU", default)
            # Ray's CPUs may be slots (num_cpus above the cores): never more threads than cores.
            return max(1, min(int(round(cpus)), os.cpu_count() or 1))
    except Exception:  # noqa: BLE001 - outside Ray
        pass
    return os.cpu_count() or default


def limit_torch_threads() -> int:
    """Give torch exactly the CPUs Ray assigned: oversubscribed threads run 5-10x slower."""
    import torch

    n = assigned_cpus()
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return n


def torch_device(num_gpus: float = 0.0) -> str:
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"

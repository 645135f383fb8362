"""What every Ray Train stage shares: the trainer, the step loop, checkpoints, progress.

A training stage supplies a `step(batch) -> loss` and a `checkpoint()`; this
module runs epochs over the worker's shard, skips the batches a restarted run
already did, checkpoints every N steps and at each epoch's end, and logs one
line per step, so the retriever and the generator resume the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

import ray
import ray.train

from ..ordering import first_rows
from ..storage import Folder, staged
from .config import TrainerConfig


CHANGED = "corpus_changed_since_training"


def last_model(cfg: TrainerConfig, ctx, outputs):
    """The last run's outputs (`outputs`, the stage's model class), when this run only follows a corpus update
    (`ctx.follows`) that changed less than `retrain_after` of the corpus since that model was trained: a whole
    training run for a 1% change buys a model the ship gate would not tell apart. Counted over updates, so
    many small ones do retrain. Otherwise the last run's folder is cleared and the stage trains."""
    from ..corpus import CorpusOutputs
    from ..corpus.delta import documents

    if ctx.previous is None:
        return None
    last = outputs.from_manifest(ctx.previous)
    corpus = CorpusOutputs.from_manifest(ctx.job["corpus"]) if "corpus" in ctx.job else None
    if ctx.follows is None or corpus is None or corpus.delta is None or not Folder(last.model_path()).exists():
        ctx.start_clean()
        return None
    changed = int(last.counts.get(CHANGED, 0)) + corpus.delta.counts.get("replace", 0)
    share = changed / max(1, corpus.counts.get("documents", 0))
    if cfg.retrain_after == 0 or share >= cfg.retrain_after:
        ctx.console.print(f"training again: {documents(changed)} ({share:.1%} of the corpus) changed since the last "
                          f"training, retrain_after {cfg.retrain_after:.0%}", highlight=False)
        ctx.start_clean()
        return None
    ctx.console.print(f"keeping the last model: {documents(changed)} ({share:.1%} of the corpus) changed since it "
                      f"was trained, below retrain_after {cfg.retrain_after:.0%}", highlight=False)
    return last.model_copy(update={"counts": {**last.counts, CHANGED: changed}})


def share_cpus(workers: int, node_cpus: list[float]) -> float:
    """The cluster's CPUs shared by the workers, less half a CPU for the data tasks feeding them, but never more
    than one node has: a worker is one process, and a request no node can meet waits forever."""
    total = sum(node_cpus) or 1
    return max(0.5, min((total - 0.5) / workers, max(node_cpus, default=total)))


def worker_cpus(cfg: TrainerConfig) -> float:
    if cfg.cpus_per_worker:
        return cfg.cpus_per_worker
    return share_cpus(cfg.workers, [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]])


def make_trainer(loop: Callable, loop_config: dict, cfg: TrainerConfig, datasets: dict, storage: str | Folder,
                 metric: str, order: str):
    """A TorchTrainer: `train` is split across workers, every worker sees all of `val`; the best `metric` is kept."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ..progress import train_log_level

    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": worker_cpus(cfg), **cfg.resources}),
        run_config=RunConfig(name="train", storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             logging_config=LoggingConfig(log_level=train_log_level()),
                             checkpoint_config=CheckpointConfig(checkpoint_score_attribute=metric,
                                                                checkpoint_score_order=order)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options={"train": ordered_ingest()}),
    )


def ordered_ingest():
    """Ray Data's ingest options with the train shard in a stable order: the seeded local shuffle then
    repeats itself, and a restarted worker skips the very batches it trained on (`batches_done`)."""
    from ray.data import DataContext, ExecutionOptions

    # DataConfig.default_ingest_options() without its deprecated exclude_resources (a warning every run)
    current = DataContext.get_current().execution_options
    return ExecutionOptions(resource_limits=current.resource_limits, preserve_order=True,
                            verbose_progress=current.verbose_progress)


def start_worker(cfg: TrainerConfig):
    """(rank, world size, device) of this worker, its torch threads set to the CPUs Ray gave it."""
    import torch

    from ..progress import quiet_train_worker
    from ..runtime import limit_torch_threads

    ctx = ray.train.get_context()
    quiet_train_worker()
    limit_torch_threads()
    torch.manual_seed(cfg.seed)
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()


def make_optimizer(params: list, cfg: TrainerConfig, config: dict, saved: dict | None, state: dict, rank: int):
    """AdamW with linear warm-up and decay over the run's steps; a resumed run gets its saved state back."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    total = config["total_steps"]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        progress(config, rank, {"event": "resumed", "step": state["step"]})
    return optimizer, scheduler


def take_split(batch, split: str, columns: list[str]):
    import pyarrow.compute as pc

    return batch.filter(pc.equal(batch["split"], split)).select(columns)


def with_draw(batch, column: str):
    import pyarrow as pa

    draw = [zlib.crc32(f"draw:{v}".encode()) for v in batch[column].to_pylist()]
    return batch.append_column("draw", pa.array(draw, pa.int64()))


def train_and_val(ds: "ray.data.Dataset", columns: list[str], validation_max: int, draw_by: str) -> tuple:
    """The rows marked `split` train and val, as the training loop reads them.

    The held-out slice is `validation_max` val rows drawn by a hash of `draw_by`, not the first ones in file
    order: files come grouped by kind (rag_examples writes its claim examples first), and the first 60 of a
    SciFact run were 48 claims. Each block keeps its own first `validation_max` draws, and one block of those
    keeps the first overall: the same rows a global sort would give, without its shuffle (seconds a training
    stage, and whole-CPU tasks that would wait forever beside the workers). Materialised here, before the
    trainer starts. Quarter-CPU tasks for the rest: the workers hold the other CPUs, and the shards stream
    through these.
    """
    light = {"batch_format": "pyarrow", "num_cpus": 0.25}
    train = ds.map_batches(take_split, fn_kwargs={"split": "train", "columns": columns}, **light)
    val = (ds.map_batches(take_split, fn_kwargs={"split": "val", "columns": columns}, **light)
           .map_batches(with_draw, fn_kwargs={"column": draw_by}, **light))
    val = first_rows(val, validation_max, ["draw"], num_cpus=0.25).drop_columns(["draw"]).materialize()
    return train, val


def new_state() -> dict:
    return {"step": 0, "epoch": 0, "batches_done": 0, "train_seconds": 0.0, "history": []}


def load_state(folder: Path) -> dict:
    import torch

    return torch.load(Path(folder) / "state.pt", weights_only=False)


def restore(fresh: Callable[[], object], from_checkpoint: Callable[[Path, dict], object]) -> tuple:
    """(model, state, saved state or None): the last checkpoint's when Ray Train restarted the group."""
    state = new_state()
    start = ray.train.get_checkpoint()
    if start is None:
        return fresh(), state, None
    with start.as_directory() as d:
        saved = load_state(d)
        model = from_checkpoint(Path(d), saved)
    state.update({k: saved[k] for k in state})
    return model, state, saved


def report_checkpoint(write: Callable[[Path], None], state: dict, metrics: dict) -> None:
    """Rank 0: `write` puts the model files in a folder; the training state goes beside them."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        torch.save(state, Path(tmp) / "state.pt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def checkpointer(state: dict, rank: int, score: Callable[[], dict], write: Callable[[Path], None],
                 extra: Callable[[], dict]) -> Callable[[], None]:
    """checkpoint(): rank 0 scores the model, writes it (`write`) with the state and `extra()` (optimizer...),
    and reports both; other ranks report the step. Once per step: an epoch may end on a checkpoint_every step,
    and a restarted worker resumes at a step its checkpoint already holds (when an epoch ended on it, the
    epoch's end called checkpoint() again: step 2 twice in the history, seen when an epoch was 2 steps)."""
    last = {"step": state["step"] if ray.train.get_checkpoint() is not None else -1}

    def checkpoint() -> None:
        if last["step"] == state["step"]:
            return
        last["step"] = state["step"]
        metrics = {"step": state["step"], "epoch": state["epoch"], "train_seconds": round(state["train_seconds"], 3)}
        if rank != 0:
            ray.train.report(metrics)
            return
        metrics.update(score())
        state["history"].append(metrics)
        report_checkpoint(write, {**state, **extra()}, {**metrics, "history": json.dumps(state["history"])})

    return checkpoint


def run_steps(cfg: TrainerConfig, config: dict, state: dict, total: int, loss_of: Callable, optim: tuple,
              checkpoint: Callable[[], None], unit: str) -> None:
    """Epochs over this worker's shard of `train` until `total` steps.

    `loss_of(batch)` returns the loss tensor; `optim` is (params, optimizer, scheduler): each step
    back-propagates, clips the gradient norm to 1 and steps both.
    """
    import torch

    params, optimizer, scheduler = optim
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    per_worker = max(1, cfg.batch_size // world)
    shard = ray.train.get_dataset_shard("train")
    tick = time.perf_counter()  # step time includes waiting for data, not checkpoints
    while state["epoch"] < cfg.epochs and state["step"] < total:
        batches = shard.iter_batches(batch_size=per_worker, drop_last=True, batch_format="pyarrow",
                                     local_shuffle_buffer_size=per_worker * 8, local_shuffle_seed=cfg.seed + state["epoch"])
        for i, batch in enumerate(batches):
            if i < state["batches_done"]:
                continue  # done before the restart
            loss = loss_of(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step(), scheduler.step(), optimizer.zero_grad()
            state["train_seconds"] += time.perf_counter() - tick
            state["step"] += 1
            state["batches_done"] = i + 1
            progress(config, rank, {"step": state["step"], "total": total, "epoch": state["epoch"],
                                    "loss": round(loss.detach().item(), 4),
                                    f"{unit}_per_s": round(state["step"] * cfg.batch_size / state["train_seconds"], 2)})
            if state["step"] >= total:
                break
            if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
                checkpoint()
            tick = time.perf_counter()
        state["epoch"] += 1
        state["batches_done"] = 0
        checkpoint()
        tick = time.perf_counter()


def progress(config: dict, rank: int, record: dict) -> None:
    """One line per step in progress.jsonl (each worker's, with its pid): for `logs` and tests."""
    path = config.get("progress")
    if not path:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"rank": rank, "pid": os.getpid(), "time": time.time(), **record}) + "\n")


def best_and_final(result, metric: str, higher_is_better: bool) -> tuple:
    """(best checkpoint, its metrics, the last report's metrics) of a finished fit()."""
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    sign = 1 if higher_is_better else -1
    best_ckpt, best = max(scored, key=lambda cm: (sign * cm[1][metric], cm[1]["step"]))
    final = max(scored, key=lambda cm: cm[1]["step"])[1]
    return best_ckpt, best, final


def progress_file(stage_dir: Folder) -> Path:
    """Where workers append their step lines: the stage folder on disk or a shared mount. An object store
    cannot append, so there each node keeps its own file under the temp dir and the manifest's
    `resumed_from_steps` counts what this node's workers logged."""
    if stage_dir.is_local:
        return Path(stage_dir.path) / "progress.jsonl"
    name = hashlib.sha256(str(stage_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "ragworks-progress" / f"{stage_dir.name}-{name}.jsonl"


def export(checkpoint, name: str, target: Folder) -> Folder:
    """A checkpoint's `name` folder copied to `target` in the workdir, wherever that is."""
    with checkpoint.as_directory() as d, staged(target) as local:
        shutil.copytree(Path(d) / name, local, dirs_exist_ok=True)
    return target


def fit_and_export(trainer, metric: str, stage_dir: Folder, progress: Path, batch_size: int) -> tuple:
    """Train, export the checkpoint with the best `metric` as `model/`: (its folder, the stage's report, the
    last step)."""
    progress.unlink(missing_ok=True)
    best_ckpt, best, final = best_and_final(trainer.fit(), metric, higher_is_better=True)
    target = export(best_ckpt, "model", stage_dir / "model")
    return target, run_report(best, final, progress, batch_size, "pairs"), final["step"]


def resumed_steps(progress_file: Path) -> list[int]:
    lines = progress_file.read_text().splitlines() if progress_file.exists() else []
    return sorted({json.loads(line)["step"] for line in lines if '"resumed"' in line})


def run_report(best: dict, final: dict, progress: Path, batch_size: int, unit: str) -> dict:
    """What both training stages report besides their artifacts: the checkpoints' scores, the restarts
    and the rate (`unit` per second over the steps' own time)."""
    return {"best": {k: v for k, v in best.items() if k != "history"}, "history": json.loads(final["history"]),
            "resumed_from_steps": resumed_steps(progress),
            "throughput": {f"{unit}_per_s": round(final["step"] * batch_size / max(final["train_seconds"], 1e-9), 3),
                           "train_seconds": final["train_seconds"]}}

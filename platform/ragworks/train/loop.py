"""The retriever training loop that every Ray Train worker runs.

sentence-transformers supplies the model and the loss (multiple-negatives
ranking: each query against its positive, its hard negatives and every other
pair's passages, gathered from all workers); Ray Train supplies the process
group, the data shard and checkpoints. Wrapping the *loss* in DDP (it holds the
model) keeps gradients in sync without touching how the loss calls the model.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import ray.train

from ..config import TrainRetrieverConfig
from ..runtime import limit_torch_threads
from .validation import dev_metrics, heldout_metrics, load_dev

COLUMNS = ["query", "positive", "positive_id", "negatives", "negative_ids"]  # a training row


def selection_metric(cfg: TrainRetrieverConfig) -> str:
    """The checkpoint score Ray Train keeps the best of and the stage exports."""
    return "dev_ndcg@10" if cfg.select_on == "dev" else "val_ndcg@10"


def load_model(path: str, cfg: TrainRetrieverConfig, device: str):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device)
    model.max_seq_length = cfg.max_seq_length
    if cfg.lora is not None:
        # peft itself, not model.add_adapter(): transformers' adapter integration pins newer peft releases.
        from peft import LoraConfig, get_peft_model

        model[0].model = get_peft_model(model[0].model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=cfg.lora.target_modules))
    return model


def exportable(model, cfg: TrainRetrieverConfig):
    """The model as users load it: LoRA adapters merged into plain weights, no peft needed to use it."""
    if cfg.lora is None:
        return model
    import copy

    merged = copy.deepcopy(model)
    merged[0].model = merged[0].model.merge_and_unload()
    return merged


def adapter_state(model, cfg: TrainRetrieverConfig) -> dict | None:
    if cfg.lora is None:
        return None
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model[0].model)


def build_loss(model, cfg: TrainRetrieverConfig, world: int):
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    loss = MultipleNegativesRankingLoss(model, scale=cfg.scale, gather_across_devices=world > 1)
    if cfg.matryoshka_dims:
        loss = MatryoshkaLoss(model, loss, matryoshka_dims=cfg.matryoshka_dims)
    return loss


def collect(iterator) -> dict[str, list]:
    """The held-out slice (bounded by validation_max) as columns."""
    cols: dict[str, list] = {name: [] for name in COLUMNS}
    for batch in iterator.iter_batches(batch_size=256, batch_format="pyarrow"):
        for name in cols:
            cols[name].extend(batch.column(name).to_pylist())
    return cols


def save_checkpoint(model, state: dict, metrics: dict) -> None:
    """Rank 0 writes the model in sentence-transformers format plus optimizer (and LoRA adapter) state."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model.save(str(Path(tmp) / "model"))
        torch.save(state, Path(tmp) / "state.pt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_loop(config: dict) -> None:
    import torch
    from transformers import get_linear_schedule_with_warmup

    cfg = TrainRetrieverConfig(**config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    limit_torch_threads()
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()

    state: dict = {"step": 0, "epoch": 0, "batches_done": 0, "train_seconds": 0.0, "history": []}
    start = ray.train.get_checkpoint()
    if start is not None:
        with start.as_directory() as d:
            saved = torch.load(Path(d) / "state.pt", weights_only=False)
            if cfg.lora is None:
                model = load_model(str(Path(d) / "model"), cfg, str(device))
            else:  # the saved model has the adapters merged: start from the base and load them back
                from peft import set_peft_model_state_dict

                model = load_model(config["model_path"], cfg, str(device))
                set_peft_model_state_dict(model[0].model, saved["adapter"])
        state.update({k: saved[k] for k in state})
    else:
        model = load_model(config["model_path"], cfg, str(device))
    loss = ray.train.torch.prepare_model(build_loss(model, cfg, world),
                                         parallel_strategy_kwargs={"find_unused_parameters": True})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    total = config["total_steps"]
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    if start is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        _progress(config, rank, {"event": "resumed", "step": state["step"]})

    val = collect(ray.train.get_dataset_shard("val")) if rank == 0 else None
    dev = load_dev(cfg.dev, cfg.seed) if rank == 0 and cfg.dev else None

    last = {"step": -1}

    def checkpoint() -> None:
        if last["step"] == state["step"]:
            return  # an epoch that ends on a checkpoint_every step
        last["step"] = state["step"]
        metrics = {"step": state["step"], "epoch": state["epoch"], "train_seconds": round(state["train_seconds"], 3)}
        if rank == 0:
            model.eval()
            metrics.update(heldout_metrics(model, val))
            if dev is not None:
                metrics.update(dev_metrics(model, dev))
            model.train()
            state["history"].append(metrics)
            full = {**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "adapter": adapter_state(model, cfg)}
            save_checkpoint(exportable(model, cfg), full, {**metrics, "history": json.dumps(state["history"])})
        else:
            ray.train.report(metrics)

    if start is None:
        checkpoint()  # the base model is a candidate too: training must beat it on held-out pairs

    per_worker = cfg.batch_size // world
    shard = ray.train.get_dataset_shard("train")
    model.train()
    tick = time.perf_counter()  # step time includes waiting for data, not checkpoints
    while state["epoch"] < cfg.epochs and state["step"] < total:
        batches = shard.iter_batches(batch_size=per_worker, drop_last=True, batch_format="pyarrow",
                                     local_shuffle_buffer_size=per_worker * 8, local_shuffle_seed=cfg.seed + state["epoch"])
        for i, batch in enumerate(batches):
            if i < state["batches_done"]:
                continue  # done before the restart
            texts = [batch.column("query").to_pylist(), batch.column("positive").to_pylist()]
            negs = batch.column("negatives").to_pylist()
            texts += [[n[k] for n in negs] for k in range(cfg.negatives)]
            features = [{k: v.to(device) if hasattr(v, "to") else v for k, v in model.preprocess(t).items()} for t in texts]
            value = loss(features, None)
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step(), scheduler.step(), optimizer.zero_grad()
            state["train_seconds"] += time.perf_counter() - tick
            state["step"] += 1
            state["batches_done"] = i + 1
            _progress(config, rank, {"step": state["step"], "total": total, "epoch": state["epoch"],
                                     "loss": round(float(value), 4),
                                     "pairs_per_s": round(state["step"] * cfg.batch_size / state["train_seconds"], 2)})
            every = cfg.checkpoint_every
            if state["step"] >= total:
                break
            if every and state["step"] % every == 0:
                checkpoint()
            tick = time.perf_counter()
        state["epoch"] += 1
        state["batches_done"] = 0
        checkpoint()
        tick = time.perf_counter()


def _progress(config: dict, rank: int, record: dict) -> None:
    """One line per step in progress.jsonl (rank 0's, with each worker's pid): for `logs` and tests."""
    path = config.get("progress")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"rank": rank, "pid": os.getpid(), "time": time.time(), **record}) + "\n")

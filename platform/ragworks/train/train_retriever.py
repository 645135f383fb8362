"""Stage `train_retriever`: mined pairs -> train/held-out split -> Ray Train -> best model.

Training rows stream from the negatives stage's Parquet through Ray Data shards;
the held-out slice is split by positive chunk, so no held-out passage is ever
trained on. Every checkpoint is scored on it (the base model at step 0 too) and
the best one is exported in sentence-transformers format as `model/`.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.expressions import col
from rich.table import Table

from ..config import TrainRetrieverConfig
from ..manifest import files_fingerprint
from ..models import resolve_embedder
from ..stage import StageError
from . import RetrieverOutputs, steps
from .loop import COLUMNS, selection_metric, train_loop


def external_inputs(cfg: TrainRetrieverConfig) -> dict:
    dev = cfg.dev
    if dev is None:
        return {}
    files = [Path(dev.dataset, name) for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{dev.split}.tsv")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"train_retriever.dev: BEIR dev set incomplete, missing {', '.join(missing)}")
    return {"dev": {f.name: files_fingerprint(f) for f in files}}


def assign_split(batch: pa.Table, cfg: TrainRetrieverConfig) -> pa.Table:
    """train / val by a hash of the positive chunk; `short` when too few hard negatives were mined."""
    held = [zlib.crc32(p.encode()) % 10_000 < cfg.validation_fraction * 10_000 for p in batch["positive_id"].to_pylist()]
    short = pc.less(pc.list_value_length(batch["negatives"]), cfg.negatives).to_pylist()
    split = ["val" if h else "short" if s else "train" for h, s in zip(held, short)]
    return batch.append_column("split", pa.array(split, pa.string()))


def make_trainer(cfg: TrainRetrieverConfig, model_path: str, total_steps: int, train: ray.data.Dataset,
                 val: ray.data.Dataset, storage, progress: Path | None = None):
    """A TorchTrainer running `train_loop` (the benchmark builds the same one)."""
    return steps.make_trainer(
        train_loop, {"cfg": cfg.model_dump(mode="json"), "model_path": model_path, "total_steps": total_steps,
                     "progress": str(progress) if progress else None},
        cfg, {"train": train, "val": val}, storage, selection_metric(cfg), "max")


def run(cfg: TrainRetrieverConfig, ctx) -> RetrieverOutputs:
    pairs = ctx.output("negatives").pairs
    ds = ray.data.read_parquet(pairs, num_cpus=0.25).select_columns(COLUMNS)
    ds = ds.map_batches(assign_split, fn_kwargs={"cfg": cfg}, batch_format="pyarrow", num_cpus=0.25).materialize()
    counts = {s: ds.filter(expr=col("split") == s).count() for s in ("train", "val", "short")}
    train, val = steps.train_and_val(ds, COLUMNS, cfg.validation_max, draw_by="query")
    if counts["train"] < cfg.batch_size:
        raise StageError(f"{counts['train']} training pairs, fewer than one batch (batch_size {cfg.batch_size})",
                         "generate more queries or lower train_retriever.batch_size")
    steps_per_epoch = counts["train"] // cfg.batch_size
    total = min(cfg.max_steps or math.inf, steps_per_epoch * cfg.epochs)
    cpus = steps.worker_cpus(cfg)
    base = resolve_embedder(cfg.model)
    ctx.console.print(f"training {base} on {counts['train']:,} pairs ({counts['val']:,} held out, {counts['short']:,} "
                      f"with fewer than {cfg.negatives} hard negatives left out): {total} steps of {cfg.batch_size}, "
                      f"{cfg.workers} worker(s) x {cpus:g} CPU")

    progress = steps.progress_file(ctx.stage_dir)
    progress.unlink(missing_ok=True)
    result = make_trainer(cfg, base, int(total), train, val, ctx.stage_dir / "ray_train", progress).fit()

    metric = selection_metric(cfg)
    best_ckpt, best, final = steps.best_and_final(result, metric, higher_is_better=True)
    target = steps.export(best_ckpt, "model", ctx.stage_dir / "model")
    report = steps.run_report(best, final, progress, cfg.batch_size, "pairs")

    ctx.console.print(history_table(report["history"], best["step"], metric))
    return RetrieverOutputs(
        model=str(target), selected_on=metric, **report,
        counts={"train_pairs": counts["train"], "val_pairs": counts["val"], "short_pairs": counts["short"],
                "steps": final["step"], "pairs": final["step"] * cfg.batch_size})


def history_table(history: list[dict], best_step: int, metric: str) -> Table:
    dev = any("dev_ndcg@10" in h for h in history)
    table = Table(title=f"checkpoints (the best {metric} is exported)")
    heads = ["step", "epoch", "held-out nDCG@10", "MRR@10", "Recall@10"] + (["dev nDCG@10", "Recall@10"] if dev else [])
    for name in [*heads, ""]:
        table.add_column(name, justify="right")
    for h in history:
        cells = [str(h["step"]), str(h["epoch"])] + [f"{h.get(k, 0):.4f}" for k in ("val_ndcg@10", "val_mrr@10", "val_recall@10")]
        if dev:
            cells += [f"{h.get(k, 0):.4f}" for k in ("dev_ndcg@10", "dev_recall@10")]
        table.add_row(*cells, "best" if h["step"] == best_step else "")
    return table

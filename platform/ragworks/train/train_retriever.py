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

from .config import TrainRerankerConfig, TrainRetrieverConfig
from rich.table import Table

from ..manifest import files_fingerprint
from ..models import resolve_embedder
from ..progress import table as progress_table
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


def split_pairs(cfg: TrainRetrieverConfig | TrainRerankerConfig, ctx) -> tuple:
    """(train, held-out, counts) of the negatives stage's pairs, split by positive chunk; the held-out
    queries are written to `heldout/` for the ship gate. Shared by the retriever and the reranker stages."""
    ds = ray.data.read_parquet(ctx.output("negatives").pairs, num_cpus=0.25).select_columns(COLUMNS)
    ds = ds.map_batches(assign_split, fn_kwargs={"cfg": cfg}, batch_format="pyarrow", num_cpus=0.25).materialize()
    counts = {s: ds.filter(expr=col("split") == s).count() for s in ("train", "val", "short")}
    train, val = steps.train_and_val(ds, COLUMNS, cfg.validation_max, draw_by="query")
    if counts["train"] < cfg.batch_size:
        raise StageError(f"{counts['train']} training pairs, fewer than one batch (batch_size {cfg.batch_size})",
                         "generate more queries or lower the stage's batch_size")
    val.select_columns(["query", "positive_id"]).write_parquet(str(ctx.stage_dir / "heldout"))
    return train, val, counts


def total_steps(cfg, counts: dict) -> int:
    return int(min(cfg.max_steps or math.inf, counts["train"] // cfg.batch_size * cfg.epochs))


def run(cfg: TrainRetrieverConfig, ctx) -> RetrieverOutputs:
    kept = steps.last_model(cfg, ctx, RetrieverOutputs)
    if kept is not None:
        return kept
    train, val, counts = split_pairs(cfg, ctx)
    total = total_steps(cfg, counts)
    base = resolve_embedder(cfg.model)
    if cfg.teacher is not None:
        train = teacher_scores(train, cfg, ctx)
    ctx.console.print(f"training {base} on {counts['train']:,} pairs ({counts['val']:,} held out, {counts['short']:,} "
                      f"with fewer than {cfg.negatives} hard negatives left out): {total} steps of {cfg.batch_size}, "
                      f"{cfg.workers} worker(s) x {steps.worker_cpus(cfg):g} CPU, loss {' + '.join(cfg.losses)}")

    progress = steps.progress_file(ctx.stage_dir)
    metric = selection_metric(cfg)
    trainer = make_trainer(cfg, base, total, train, val, ctx.stage_dir / "ray_train", progress)
    target, report, last = steps.fit_and_export(trainer, metric, ctx.stage_dir, progress, cfg.batch_size)
    ctx.console.print(history_table(report["history"], report["best"]["step"], metric))
    return RetrieverOutputs(
        model=str(target), selected_on=metric, heldout=str(ctx.stage_dir / "heldout"), **report,
        teacher=cfg.teacher and teacher_model(cfg, ctx),
        counts={"train_pairs": counts["train"], "val_pairs": counts["val"], "short_pairs": counts["short"],
                "steps": last, "pairs": last * cfg.batch_size})


def teacher_model(cfg: TrainRetrieverConfig, ctx) -> str:
    """The teacher a spec names: 'reranker' is the job's trained cross-encoder."""
    if cfg.teacher != "reranker":
        return cfg.teacher
    return ctx.output("train_reranker").model


class TeacherScores:
    """Ray Data callable class: the cross-encoder's raw scores of (query, positive) and (query, each hard
    negative), loaded once per actor. GPL (Wang et al., 2022) trains the bi-encoder on their margins."""

    def __init__(self, model: str, negatives: int, max_length: int, batch_size: int):
        from ..index.rerank import load_cross_encoder

        self.model = load_cross_encoder(model, max_length)
        self.negatives, self.batch_size = negatives, batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        queries, positives = batch["query"].to_pylist(), batch["positive"].to_pylist()
        negatives = [n[: self.negatives] for n in batch["negatives"].to_pylist()]
        pairs = [(q, d) for q, p, ns in zip(queries, positives, negatives) for d in [p, *ns]]
        flat = self.model.predict(pairs, batch_size=self.batch_size, activation_fn=torch.nn.Identity(),
                                  convert_to_numpy=True, show_progress_bar=False).tolist()
        width = self.negatives + 1
        scores = [flat[i * width:(i + 1) * width] for i in range(len(queries))]
        return batch.append_column("teacher", pa.array(scores, pa.list_(pa.float32())))


def teacher_scores(train: ray.data.Dataset, cfg: TrainRetrieverConfig, ctx) -> ray.data.Dataset:
    """The training rows with the teacher's scores, computed in an actor pool before the trainer takes the CPUs."""
    model = teacher_model(cfg, ctx)
    ctx.console.print(f"scoring each (query, positive, {cfg.negatives} negatives) with the teacher {model}")
    return train.map_batches(TeacherScores, fn_constructor_kwargs={
        "model": model, "negatives": cfg.negatives, "max_length": cfg.max_seq_length, "batch_size": cfg.teacher_batch_size},
        batch_size=cfg.teacher_batch_size, batch_format="pyarrow", concurrency=cfg.teacher_concurrency,
        num_cpus=1).materialize()


def cell(record: dict, key: str) -> str:
    return f"{record[key]:.4f}" if key in record else "-"


def history_table(history: list[dict], best_step: int, metric: str) -> Table:
    dev = any("dev_ndcg@10" in h for h in history)
    table = progress_table(f"checkpoints (the best {metric} is exported)")
    heads = ["step", "epoch", "held-out nDCG@10", "MRR@10", "Recall@10"] + (["dev nDCG@10", "Recall@10"] if dev else [])
    for name in [*heads, ""]:
        table.add_column(name, justify="right")
    for h in history:
        cells = [str(h["step"]), str(h["epoch"])] + [cell(h, k) for k in ("val_ndcg@10", "val_mrr@10", "val_recall@10")]
        if dev:
            cells += [cell(h, k) for k in ("dev_ndcg@10", "dev_recall@10")]
        table.add_row(*cells, "best" if h["step"] == best_step else "")
    return table

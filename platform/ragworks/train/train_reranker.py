"""Stage `train_reranker`: mined pairs -> train/held-out split -> Ray Train -> the best cross-encoder.

The same pairs, split and held-out slice as `train_retriever` (by positive
chunk); the checkpoint that re-ranks the held-out queries' pools best is
exported as `model/`, a sentence-transformers CrossEncoder that `rerank:
{model: reranker}` (evaluate, serve) and `train_retriever.teacher: reranker`
(GPL) load.
"""

from __future__ import annotations

from ..models import DEFAULT_EMBEDDER, resolve_model
from . import RerankerOutputs, steps
from .config import TrainRerankerConfig
from .reranker_loop import METRIC, reranker_loop
from .train_retriever import history_table, split_pairs, total_steps


def run(cfg: TrainRerankerConfig, ctx) -> RerankerOutputs:
    kept = steps.last_model(cfg, ctx, RerankerOutputs)
    if kept is not None:
        return kept
    train, val, counts = split_pairs(cfg, ctx)
    total = total_steps(cfg, counts)
    base = resolve_model(DEFAULT_EMBEDDER if cfg.model == "base" else cfg.model)
    ctx.console.print(f"training a cross-encoder from {base} on {counts['train']:,} pairs, each with {cfg.negatives} "
                      f"hard negative(s) ({counts['val']:,} held out): {total} steps of {cfg.batch_size}")
    progress = steps.progress_file(ctx.stage_dir)
    trainer = steps.make_trainer(
        reranker_loop, {"cfg": cfg.model_dump(mode="json"), "model_path": base, "total_steps": total,
                        "progress": str(progress)},
        cfg, {"train": train, "val": val}, ctx.stage_dir / "ray_train", METRIC, "max")
    target, report, last = steps.fit_and_export(trainer, METRIC, ctx.stage_dir, progress, cfg.batch_size)
    ctx.console.print(history_table(report["history"], report["best"]["step"], METRIC))
    return RerankerOutputs(model=str(target), heldout=str(ctx.stage_dir / "heldout"), **report,
                           counts={"train_pairs": counts["train"], "val_pairs": counts["val"],
                                   "short_pairs": counts["short"], "steps": last, "pairs": last * cfg.batch_size})

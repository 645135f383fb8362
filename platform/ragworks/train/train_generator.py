"""Stage `train_generator`: RAFT examples -> train/held-out split -> Ray Train LoRA -> adapter.

The held-out slice is split by source chunk, so no held-out passage is trained
on; every checkpoint's loss on it picks the exported adapter (the untouched
base model at step 0 is a candidate), and the evaluate stage answers the same
held-out questions with the base and the tuned model.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import pyarrow as pa
import ray
from ray.data.expressions import col

from .config import TrainGeneratorConfig
from rich.table import Table

from ..models import causal_lm_source
from ..progress import table as progress_table
from ..stage import StageError
from ..storage import Folder, staged
from . import GeneratorOutputs, steps
from .generator_loop import COLUMNS, train_loop

METRIC = "val_loss"


def assign_split(batch: pa.Table, fraction: float) -> pa.Table:
    held = [zlib.crc32(c.encode()) % 10_000 < fraction * 10_000 for c in batch["id"].to_pylist()]
    return batch.select(COLUMNS).append_column("split", pa.array(["val" if h else "train" for h in held], pa.string()))


def split_examples(cfg: TrainGeneratorConfig, examples: str) -> tuple[ray.data.Dataset, ray.data.Dataset, dict]:
    """(train, held-out, counts) of the rag_examples output."""
    ds = ray.data.read_parquet(examples, num_cpus=0.25)
    ds = ds.map_batches(assign_split, fn_kwargs={"fraction": cfg.validation_fraction}, batch_format="pyarrow",
                        num_cpus=0.25).materialize()
    train, val = steps.train_and_val(ds, COLUMNS, cfg.validation_max, draw_by="key")
    return train, val, {"train": ds.filter(expr=col("split") == "train").count(), "val": val.count()}


def trainer(cfg: TrainGeneratorConfig, base: str, total: int, train, val, storage, progress: Path | None = None):
    """A TorchTrainer running the LoRA loop (the workers benchmark builds the same one)."""
    return steps.make_trainer(
        train_loop, {"cfg": cfg.model_dump(mode="json"), "model_path": base, "total_steps": total,
                     "progress": str(progress) if progress else None},
        cfg, {"train": train, "val": val}, storage, METRIC, "min")


def run(cfg: TrainGeneratorConfig, ctx) -> GeneratorOutputs:
    kept = steps.last_model(cfg, ctx, GeneratorOutputs)
    if kept is not None:
        return kept
    train, val, counts = split_examples(cfg, ctx.output("rag_examples").generated)
    heldout = ctx.stage_dir / "heldout"
    val.write_parquet(str(heldout))  # the evaluate stage answers these
    if counts["train"] < cfg.batch_size:
        raise StageError(f"{counts['train']} training examples, fewer than one batch (batch_size {cfg.batch_size})",
                         "generate more rag_examples or lower train_generator.batch_size")
    if counts["val"] == 0:
        raise StageError("no held-out examples", "raise train_generator.validation_fraction or generate more rag_examples")
    total = int(min(cfg.max_steps or math.inf, counts["train"] // cfg.batch_size * cfg.epochs))
    base = causal_lm_source(cfg.model)  # a GGUF is converted once, here, not by every worker
    ctx.console.print(f"LoRA (r={cfg.lora.r}) on {cfg.model} with {counts['train']:,} examples ({counts['val']:,} "
                      f"held out): {total} steps of {cfg.batch_size}, {cfg.workers} worker(s) x "
                      f"{steps.worker_cpus(cfg):g} CPU")

    progress = steps.progress_file(ctx.stage_dir)
    progress.unlink(missing_ok=True)
    result = trainer(cfg, base, total, train, val, ctx.stage_dir / "ray_train", progress).fit()
    best_ckpt, best, final = steps.best_and_final(result, METRIC, higher_is_better=False)
    adapter = steps.export(best_ckpt, "adapter", ctx.stage_dir / "adapter")
    merged = str(export_merged(base, str(adapter), ctx.stage_dir / "merged")) if cfg.merged else None
    report = steps.run_report(best, final, progress, cfg.batch_size, "examples")
    ctx.console.print(history_table(report["history"], best["step"]))
    return GeneratorOutputs(
        adapter=str(adapter), heldout=str(heldout), merged=merged, model=cfg.model, base_model=base,
        max_context_words=cfg.max_context_words, **report,
        counts={"train_examples": counts["train"], "val_examples": counts["val"], "steps": final["step"],
                "examples": final["step"] * cfg.batch_size})


def export_merged(base: str, adapter: str, target: Folder) -> Folder:
    """The base model with the adapter merged in: loadable with no peft, by any runtime."""
    from ..models import load_causal_lm

    model, tok = load_causal_lm(base, adapter=adapter)
    with staged(target) as local:
        model.save_pretrained(local)
        tok.save_pretrained(local)
    return target


def history_table(history: list[dict], best_step: int) -> Table:
    table = progress_table("checkpoints (the lowest held-out loss is exported)")
    for name in ("step", "epoch", "held-out loss", "perplexity", ""):
        table.add_column(name, justify="right")
    for h in history:
        table.add_row(str(h["step"]), str(h["epoch"]), f"{h['val_loss']:.4f}", f"{h['val_perplexity']:.2f}",
                      "best" if h["step"] == best_step else "")
    return table

"""Stage `corpus`: read -> normalise -> dedup -> chunk -> write.

Every input record ends as exactly one of: the chunks of a kept document, a
duplicate, or a reject; so input = documents + duplicates + rejects, always.
Dedup needs the whole corpus's keys before it can decide, so the normalised
documents, and each dedup pass, are written to the stage folder (`_dedup`)
between the read and the chunking: a lost node costs the pass it was in, and a
re-run of a half-done stage starts at the first unfinished pass. Nothing relies
on the order rows arrive in.
"""

from __future__ import annotations

import pyarrow as pa
import ray
from ray.data.expressions import col
from rich.table import Table

from ..checkpoint import WRITE_ARGS, Checkpoints
from ..config import CorpusConfig
from ..manifest import files_fingerprint
from ..ordering import first_rows
from ..runtime import actor_pool
from ..storage import Folder
from . import CorpusOutputs
from .chunking import Chunk
from .dedup import KEYS_BATCH, add_positions, deduplicate
from .normalize import normalize_batch
from .readers import read_source, source_files
from .records import SCHEMA

# documents per chunker call: a whole block (Ray's default) can hold 100k+ documents, and their
# tokenizations at once took a 1M-document run's chunker actor past 3 GB
CHUNK_BATCH = 512
OUTPUTS = {"chunk": "chunks", "duplicate": "duplicates", "reject": "rejects"}
DOCUMENTS = SCHEMA.append(pa.field("pos", pa.int64()))


def external_inputs(cfg: CorpusConfig) -> dict:
    return {"source": [files_fingerprint(p) for p in source_files(cfg.source)],
            "tokenizer": cfg.chunking.tokenizer_model}


def run(cfg: CorpusConfig, ctx) -> CorpusOutputs:
    ctx.console.print(f"reading {cfg.source.format} records from {cfg.source.path}")

    files = {path: i for i, path in enumerate(source_files(cfg.source))}
    ds = read_source(cfg.source)
    ds = ds.map_batches(normalize_batch, fn_kwargs={"cfg": cfg.normalize}, batch_size=KEYS_BATCH,
                        batch_format="pyarrow")
    ds = ds.map_batches(add_positions, fn_kwargs={"files": files}, batch_format="pyarrow")
    if cfg.source.limit:
        ds = first_rows(ds, cfg.source.limit, ["pos"])
    # Blocks of a few chunker batches, made while nothing else holds a CPU: every chunker then has blocks to
    # take (a dozen 100k-document blocks kept one busy while the other core idled); split later, next to the
    # chunkers, the 1-CPU split task found no node with a whole CPU free on a 3-node cluster and hung
    keep = Checkpoints(ctx.stage_dir / "_dedup")
    ds = keep("documents", ds.repartition(target_num_rows_per_block=CHUNK_BATCH * 8), DOCUMENTS)
    ds, plan = deduplicate(ds, cfg.dedup, keep)
    ctx.console.print(f"dedup: {plan['documents']:,} documents, "
                      + ("in one task" if plan["partitions"] == 1 else f"{plan['partitions']} hash partitions"))
    # the whole pool starts at once: its input is all waiting
    ds = ds.map_batches(Chunk, fn_constructor_args=(cfg.chunking, cfg.chunking.tokenizer_model),
                        batch_size=CHUNK_BATCH, batch_format="pyarrow",
                        **actor_pool(cfg.concurrency, 0.5, resources=cfg.resources, start_all=True))

    parts = ctx.stage_dir / "_parts"
    parts.remove()  # a resumed run's half-written output
    ds.write_parquet(str(parts), partition_cols=["kind"], ray_remote_args=WRITE_ARGS)
    outputs = {}
    for kind, name in OUTPUTS.items():
        target = ctx.stage_dir / name
        target.remove()
        if (parts / f"kind={kind}").exists():
            (parts / f"kind={kind}").move_to(target)
        else:
            target.mkdir()
        outputs[name] = str(target)
    parts.remove()
    keep.remove()

    counts = count_outputs(outputs)
    print_counts(ctx.console, counts, outputs["rejects"])
    return CorpusOutputs(**outputs, counts=counts)


def _read(path: str) -> ray.data.Dataset | None:
    return ray.data.read_parquet(path) if Folder(path).files(".parquet") else None


def count_outputs(outputs: dict[str, str]) -> dict[str, int]:
    chunks, dups, rejects = (_read(outputs[k]) for k in ("chunks", "duplicates", "rejects"))
    chunks = chunks.select_columns(["chunk_index"]) if chunks else None  # never read the text to count
    n_chunks = chunks.count() if chunks else 0
    n_docs = chunks.filter(expr=col("chunk_index") == 0).count() if chunks else 0
    n_dups = dups.count() if dups else 0
    n_rejects = rejects.count() if rejects else 0
    return {"input_records": n_docs + n_dups + n_rejects, "documents": n_docs, "chunks": n_chunks,
            "duplicates": n_dups, "rejects": n_rejects}


def print_counts(console, counts: dict[str, int], rejects_dir: str) -> None:
    table = Table(title="corpus")
    for k in counts:
        table.add_column(k.replace("_", " "), justify="right")
    table.add_row(*(f"{v:,}" for v in counts.values()))
    console.print(table)
    if counts["rejects"]:
        sample = _read(rejects_dir).select_columns(["source", "line", "reason"]).take(5)
        console.print(f"[yellow]{counts['rejects']} rejected records kept in {rejects_dir}; first ones:")
        for r in sample:
            where = f"{r['source']}:{r['line']}" if r["line"] is not None else r["source"]
            console.print(f"  {where}: {r['reason']}")

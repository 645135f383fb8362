"""Stage `corpus`: read -> normalise -> dedup -> chunk -> write; on a re-run, only what changed.

Every input record ends as exactly one of: the chunks of a kept document, a
duplicate, or a reject; so input = documents + duplicates + rejects, always.
Dedup needs the whole corpus's keys before it can decide, so the normalised
documents, and each dedup pass, are written to the stage folder (`_dedup`)
between the read and the chunking: a lost node costs the pass it was in, and a
re-run of a half-done stage starts at the first unfinished pass. Nothing relies
on the order rows arrive in.

Every decided record is kept (`records`: text, content hash, dedup keys,
decision) with each source file's fingerprint, so a re-run over changed input
with the same recipe is a delta (`delta.py`): only the changed files are read
and signed, dedup decides again over the carried and the new records, and only
the documents whose kept version changed are chunked; `delta` in the outputs
tells the index what to replace. Each run writes a folder of its own
(`ctx.version_dir`), so the last run's outputs stay whole until this run's
manifest replaces them.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.expressions import col
from rich.table import Table

from ..checkpoint import READ_ARGS, WRITE_ARGS, Checkpoints
from ..config import CorpusConfig
from ..manifest import files_fingerprint
from ..ordering import first_rows
from ..runtime import actor_pool
from ..storage import Folder
from . import CorpusDelta, CorpusOutputs
from .chunking import Chunk
from .dedup import KEYS_BATCH, add_positions, deduplicate, key_schema, with_keys
from .delta import carry, changes, documents, summary, touched_files
from .normalize import normalize_batch
from .readers import read_source, source_files
from .records import SCHEMA

# documents per chunker call: a whole block (Ray's default) can hold 100k+ documents, and their
# tokenizations at once took a 1M-document run's chunker actor past 3 GB
CHUNK_BATCH = 512
LIGHT = {"batch_format": "pyarrow", "num_cpus": 0.25}


def records_schema(cfg: CorpusConfig) -> pa.Schema:
    """A decided record: the corpus row, its order key, its dedup keys, and the decision it had last run."""
    schema = SCHEMA.append(pa.field("pos", pa.int64()))
    for field in key_schema(cfg.dedup):
        if field.name not in schema.names:
            schema = schema.append(field)
    return schema.append(pa.field("prev_kind", pa.string()))


def external_inputs(cfg: CorpusConfig) -> dict:
    return {"source": [files_fingerprint(p) for p in source_files(cfg.source)],
            "tokenizer": cfg.chunking.tokenizer_model}


def run(cfg: CorpusConfig, ctx) -> CorpusOutputs:
    files = {path: files_fingerprint(path) for path in source_files(cfg.source)}
    previous = last_build(cfg, ctx)
    out = ctx.version_dir
    keep = Checkpoints(out / "_dedup")
    schema = records_schema(cfg)
    read, gone, moved, removed = list(files), [], {}, 0
    if previous is not None:
        read, gone, moved, removed = touched_files(previous.files, previous.source_root, files, source_root(cfg))
        ctx.console.print(f"updating the corpus of the last run: {len(read):,} of {len(files):,} files changed or "
                          f"added, {removed:,} removed; reading those only", highlight=False)
    else:
        ctx.console.print(f"reading {cfg.source.format} records from {cfg.source.path}")

    order = {path: i for i, path in enumerate(files)}  # the final input's file order: "earliest copy" means it
    parts = []
    if read:
        ds = read_source(cfg.source, read)
        ds = ds.map_batches(normalize_batch, fn_kwargs={"cfg": cfg.normalize}, batch_size=KEYS_BATCH,
                            batch_format="pyarrow")
        ds = ds.map_batches(add_positions, fn_kwargs={"files": order}, batch_format="pyarrow")
        if cfg.source.limit:
            ds = first_rows(ds, cfg.source.limit, ["pos"])
        ds = ds.map_batches(_keyed, fn_kwargs={"cfg": cfg.dedup, "schema": schema}, batch_size=KEYS_BATCH,
                            batch_format="pyarrow")
        # Blocks of a few chunker batches, made while nothing else holds a CPU: every chunker then has blocks to
        # take (a dozen 100k-document blocks kept one busy while the other core idled); split later, next to the
        # chunkers, the 1-CPU split task found no node with a whole CPU free on a 3-node cluster and hung
        parts.append(keep("documents", ds.repartition(target_num_rows_per_block=CHUNK_BATCH * 8), schema))
    if previous is not None:
        carried = ray.data.read_parquet(previous.records, **READ_ARGS) \
            .map_batches(carry, fn_kwargs={"moved": moved}, **LIGHT) \
            .map_batches(add_positions, fn_kwargs={"files": order}, batch_format="pyarrow") \
            .map_batches(conform, fn_kwargs={"schema": schema}, batch_format="pyarrow")
        parts.append(carried)
    docs = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    decided, plan = deduplicate(docs, cfg.dedup, keep)
    ctx.console.print(f"dedup: {plan['documents']:,} documents, "
                      + ("in one task" if plan["partitions"] == 1 else f"{plan['partitions']} hash partitions"))
    records = Checkpoints(out)("records", decided, schema, materialize=False)

    kept = records.filter(expr=col("kind") == "doc")
    delta = None
    if previous is not None:
        todo, counts = changes(ray.data.read_parquet(previous.records, **READ_ARGS), records, gone, read)
        ctx.console.print(f"{summary(counts)}: {documents(counts['upsert'])} to chunk and index, "
                          f"{counts['replace'] - counts['upsert']:,} to drop", highlight=False)
        upsert = ray.put(todo["doc_id"].filter(todo["upsert"]))
        kept = kept.map_batches(_with_ids, fn_kwargs={"ids": upsert, "keep": True}, **LIGHT)
        replaced = out / "delta" / "replaced"
        replaced.mkdir()
        _write_table(todo.select(["doc_id", "upsert"]), replaced)
        delta = CorpusDelta(base=ctx.previous["run_id"], chunks=str(out / "delta" / "chunks"), replaced=str(replaced),
                            files_read=len(read), files_removed=removed, counts=counts)
    # the whole pool starts at once: its input is all waiting
    chunks = kept.select_columns(SCHEMA.names).map_batches(
        Chunk, fn_constructor_args=(cfg.chunking, cfg.chunking.tokenizer_model), batch_size=CHUNK_BATCH,
        batch_format="pyarrow", **actor_pool(cfg.concurrency, 0.5, resources=cfg.resources, start_all=True))
    if delta is not None:  # the new chunks on their own, for the index; beside the last run's that stay
        chunks = Checkpoints(out / "delta")("chunks", chunks, SCHEMA)
        stay = ray.data.read_parquet(previous.chunks, **READ_ARGS) \
            .map_batches(_with_ids, fn_kwargs={"ids": ray.put(todo["doc_id"]), "keep": False}, **LIGHT)
        chunks = stay.union(chunks)
    outputs = {"chunks": str(out / "chunks"), "duplicates": str(out / "duplicates"), "rejects": str(out / "rejects")}
    _write(chunks, outputs["chunks"])
    for kind, name in (("duplicate", "duplicates"), ("reject", "rejects")):
        _write(records.filter(expr=col("kind") == kind).select_columns(SCHEMA.names), outputs[name])
    keep.remove()

    counts = count_outputs(outputs)
    print_counts(ctx.console, counts, outputs["rejects"])
    return CorpusOutputs(**outputs, records=str(out / "records"), files=files, source_root=source_root(cfg),
                         delta=delta, counts=counts)


def source_root(cfg: CorpusConfig) -> str:
    """What a source file's path is relative to, for the next run: a project moved or uploaded again
    (`ragworks submit`) finds its files unchanged."""
    path = Path(cfg.source.path)
    return str(path if path.is_dir() else path.parent)


def _keyed(batch: pa.Table, cfg, schema: pa.Schema) -> pa.Table:
    return conform(with_keys(batch, cfg), schema)


def conform(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """`batch` in `schema`'s columns and order; a column it lacks is null (a new record has no last decision)."""
    return pa.table([batch[f.name].cast(f.type) if f.name in batch.column_names else pa.nulls(batch.num_rows, f.type)
                     for f in schema], schema=schema)


def last_build(cfg: CorpusConfig, ctx) -> CorpusOutputs | None:
    """The last run's outputs when this run can be a delta on them: the same recipe (the runner hands a
    previous manifest only when the stage's config is the same), the same tokenizer, no `limit` (the first N
    records of a changed input are not a delta), and records to compare with."""
    if ctx.previous is None or cfg.source.limit:
        return None
    before = CorpusOutputs.from_manifest(ctx.previous)
    if (ctx.previous.get("external") or {}).get("tokenizer") != cfg.chunking.tokenizer_model:
        return None
    if not (before.records and before.files and before.source_root) or not Folder(before.records).exists():
        return None
    return before


def _with_ids(batch: pa.Table, ids, keep: bool) -> pa.Table:
    """The rows whose doc_id is (keep) or is not (not keep) in `ids`, a delta's ids in the object store."""
    ids = ray.get(ids) if isinstance(ids, ray.ObjectRef) else ids
    inside = pc.is_in(batch["doc_id"], value_set=ids).fill_null(False)
    return batch.filter(inside if keep else pc.invert(inside))


def _write(ds: ray.data.Dataset, target: str) -> None:
    folder = Folder(target)
    folder.remove()  # a resumed run's half-written output
    ds.write_parquet(target, ray_remote_args=WRITE_ARGS)
    folder.mkdir()  # an empty result writes no file, and no folder


def _write_table(table: pa.Table, folder: Folder) -> None:
    import pyarrow.parquet as pq

    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    (folder / "ids.parquet").write_bytes(buffer.getvalue().to_pybytes())


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

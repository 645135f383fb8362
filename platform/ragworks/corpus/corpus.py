"""Stage `corpus`: read -> normalise -> dedup -> chunk -> write; on a re-run, only what changed.

Every input record ends as exactly one of: the chunks of a kept document, a
duplicate, or a reject; so input = documents + duplicates + rejects, always.
Dedup needs the whole corpus's keys before it can decide, so the normalised
documents, and each dedup pass, are written to the stage folder (`_dedup`)
between the read and the chunking: a lost node costs the pass it was in, and a
re-run of a half-done stage starts at the first unfinished pass. Nothing relies
on the order rows arrive in.

Every decided record is kept (`records`: text, content hash, dedup keys,
decision) with each source file's fingerprint, and every output folder is kept in
parts, one per source file (`parts.py`). A re-run over changed input with the
same recipe is a delta (`delta.py`): only the changed files are read and signed,
dedup decides again over the new records and the carried records' keys (their
text is not read), only the documents whose kept version changed are chunked,
and only the parts of the files read, or whose records' decisions changed, are
written; every other part is linked from the last run. `delta` in the outputs
tells the index what to replace. Each run writes a folder of its own
(`ctx.version_dir`), so the last run's outputs stay whole until this run's
manifest replaces them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.expressions import col

from ..checkpoint import READ_ARGS, Checkpoints
from ..manifest import files_fingerprint
from ..ordering import first_rows
from ..progress import table as progress_table
from ..runtime import actor_pool
from ..storage import Folder
from . import CorpusDelta, CorpusOutputs
from . import ledger, parts
from .chunking import Chunk
from .config import CorpusConfig
from .dedup import KEYS_BATCH, _in_one_task, add_positions, deduplicate, key_schema, with_keys
from .delta import (PREVIOUS, carry, changed_parts, changes, documents, renamed, renames, summary, touched_files,
                    with_decisions)
from .normalize import normalize_batch
from .parts import with_part
from .readers import read_source, source_files
from .records import SCHEMA

# documents per chunker call: a whole block (Ray's default) can hold 100k+ documents, and their
# tokenizations at once took a 1M-document run's chunker actor past 3 GB
CHUNK_BATCH = 512
LIGHT = {"batch_format": "pyarrow", "num_cpus": 0.25}


def records_schema(cfg: CorpusConfig) -> pa.Schema:
    """A decided record: the corpus row, its order key, its dedup keys, its part, and the decision it had last run."""
    schema = SCHEMA.append(pa.field("pos", pa.int64()))
    for field in key_schema(cfg.dedup):
        if field.name not in schema.names:
            schema = schema.append(field)
    for name in ("part", *PREVIOUS.values()):
        schema = schema.append(pa.field(name, pa.string()))
    return schema


TEXT_COLUMNS = ("title", "text", "metadata")  # what dedup does not read: a carried record's keys are enough


def external_inputs(cfg: CorpusConfig) -> dict:
    return {"source": [files_fingerprint(p) for p in source_files(cfg.source)],
            "tokenizer": cfg.chunking.tokenizer_model}


def run(cfg: CorpusConfig, ctx) -> CorpusOutputs:
    files = {path: files_fingerprint(path) for path in source_files(cfg.source)}
    root = source_root(cfg)
    part_of = parts.part_ids(files, root)
    previous = last_build(cfg, ctx)
    out = ctx.version_dir
    keep = Checkpoints(out / "_dedup")
    schema = records_schema(cfg)
    read, gone, moved, removed = list(files), [], {}, 0
    if previous is not None:
        read, gone, moved, removed = touched_files(previous.files, previous.source_root, files, root)
        ctx.console.print(f"updating the corpus of the last run: {len(read):,} of {len(files):,} files changed or "
                          f"added, {removed:,} removed; reading those only", highlight=False)
    else:
        ctx.console.print(f"reading {cfg.source.format} records from {cfg.source.path}")

    order = {path: i for i, path in enumerate(files)}  # the final input's file order: "earliest copy" means it
    sources = []
    if read:
        ds = read_source(cfg.source, read)
        ds = ds.map_batches(normalize_batch, fn_kwargs={"cfg": cfg.normalize}, batch_size=KEYS_BATCH,
                            batch_format="pyarrow")
        ds = ds.map_batches(add_positions, fn_kwargs={"files": order}, batch_format="pyarrow")
        if cfg.source.limit:
            ds = first_rows(ds, cfg.source.limit, ["pos"])
        ds = ds.map_batches(_keyed, fn_kwargs={"cfg": cfg.dedup, "schema": schema, "parts": part_of},
                            batch_size=KEYS_BATCH, batch_format="pyarrow")
        # Blocks of a few chunker batches, made while nothing else holds a CPU: every chunker then has blocks to
        # take (a dozen 100k-document blocks kept one busy while the other core idled); split later, next to the
        # chunkers, the 1-CPU split task found no node with a whole CPU free on a 3-node cluster and hung
        sources.append(keep("documents", ds.repartition(target_num_rows_per_block=CHUNK_BATCH * 8), schema))
    book, stale, ledger_uri = None, set(), str(ctx.stage_dir / ledger.NAME)
    if previous is not None:
        # the parts whose last-run records go: of the files read again, and of the files gone
        stale = {part_of[p] for p in read} | {parts.part_id(os.path.relpath(p, previous.source_root)) for p in gone}
        book = _ledger(previous, ledger_uri)
        if book is not None:  # the carried documents in a component with a change, from the ledger
            sources.append(_affected(book, stale, sources[0] if read else None, previous, cfg, schema, moved,
                                     order, part_of))
        else:  # a last run with no ledger: every carried record's keys (their text stays in its parts)
            columns = [n for n in schema.names if n not in TEXT_COLUMNS + ("part", *PREVIOUS.values())]
            sources.append(_carried(ray.data.read_parquet(previous.records, columns=columns, partitioning=None,
                                                          **READ_ARGS), schema, moved, order, part_of))
    docs = sources[0].union(*sources[1:]) if len(sources) > 1 else sources[0]
    decided, plan = deduplicate(docs, cfg.dedup, keep)
    ctx.console.print(f"dedup: {plan['documents']:,} documents"
                      + (" (the new ones, and the carried ones in a component with a change)" if book else "")
                      + (", in one task" if plan["partitions"] == 1 else f", {plan['partitions']} hash partitions"),
                      highlight=False)
    outputs = {name: str(out / name) for name in ("chunks", "duplicates", "rejects", "records")}
    link, delta = set(), None
    if previous is None:
        parts.write(decided, outputs["records"])
    else:
        decided = keep("decided", decided, schema, materialize=False)  # read again by each keyed pass below
        rewrite, link = _rewritten(decided, previous, schema, moved, order, part_of, root)
        moved_all = renames(previous.files, previous.source_root, files, root)
        todo, counts = changes(_read_parts(parts.paths(previous.records, stale), schema, part_of, list(SIDE_COLUMNS)),
                               decided.select_columns([*SIDE_COLUMNS, "prev_kind"]), gone, read)
        ctx.console.print(f"{summary(counts)}: {documents(counts['upsert'])} to chunk and index, "
                          f"{counts['replace'] - counts['upsert']:,} to drop; {len(link):,} of "
                          f"{len(files):,} files' outputs kept as they were", highlight=False)
        replaced = out / "delta" / "replaced"
        replaced.mkdir()
        _write_table(todo.select(["doc_id", "upsert"]), replaced)
        delta = CorpusDelta(base=ctx.previous["run_id"], chunks=str(out / "delta" / "chunks"), replaced=str(replaced),
                            files_read=len(read), files_removed=removed, counts=counts)
        parts.write(rewrite, outputs["records"])
    # the records written this run: every one on a rebuild, those of the parts not linked on an update
    written = _read_parts(parts.paths(outputs["records"]), schema, part_of)
    kept = written.filter(expr=col("kind") == "doc")
    if delta is not None:
        kept = kept.map_batches(_with_ids, fn_kwargs={"ids": ray.put(todo["doc_id"].filter(todo["upsert"])),
                                                      "keep": True}, **LIGHT)
    # the whole pool starts at once: its input is all waiting
    chunks = kept.select_columns(SCHEMA.names).map_batches(
        Chunk, fn_constructor_args=(cfg.chunking, cfg.chunking.tokenizer_model), batch_size=CHUNK_BATCH,
        batch_format="pyarrow", **actor_pool(cfg.concurrency, 0.5, resources=cfg.resources, start_all=True)) \
        .map_batches(_parted, fn_kwargs={"parts": part_of, "schema": PARTED}, **LIGHT)
    if delta is not None:  # the new chunks on their own, for the index; beside the last run's that stay
        chunks = Checkpoints(out / "delta")("chunks", chunks, PARTED)
        stay = parts.paths(previous.chunks, (parts.present(previous.chunks) - link) & set(part_of.values()))
        if stay:  # the rewritten parts' other chunks, under this run's paths
            chunks = ray.data.read_parquet(stay, partitioning=None, **READ_ARGS) \
                .map_batches(_with_ids, fn_kwargs={"ids": ray.put(todo["doc_id"]), "keep": False}, **LIGHT) \
                .map_batches(renamed, fn_kwargs={"paths": moved_all}, **LIGHT) \
                .map_batches(_parted, fn_kwargs={"parts": part_of, "schema": PARTED}, **LIGHT).union(chunks)
    parts.write(chunks, outputs["chunks"])
    for kind, name in (("duplicate", "duplicates"), ("reject", "rejects")):
        parts.write(written.filter(expr=col("kind") == kind).select_columns(PARTED.names), outputs[name])
    if book is not None:  # the ledger follows the records: the parts written replace their rows and the gone ones'
        version = ledger.write(written, ledger_uri, cfg.dedup,
                               append_to=ledger.drop_parts(book, stale | parts.present(outputs["records"])))
    if previous is not None:
        for name in ("records", "chunks", "duplicates", "rejects"):
            parts.link(getattr(previous, name), outputs[name], link)
    if book is None:  # a first ledger, of every record
        version = ledger.write(_read_parts(parts.paths(outputs["records"]), schema, part_of), ledger_uri, cfg.dedup)
    keep.remove()

    counts = count_outputs(outputs, previous, link)
    print_counts(ctx.console, counts, outputs["rejects"])
    return CorpusOutputs(**outputs, files=files, source_root=root, parted=True, delta=delta, counts=counts,
                         ledger=ledger_uri, ledger_version=version)


PARTED = SCHEMA.append(pa.field("part", pa.string()))  # an output row and the part it is written to


def _read_parts(folders: list[str], schema: pa.Schema, part_of: dict, columns: list[str] | None = None
                ) -> ray.data.Dataset:
    """Records of the part folders `folders`, in `schema` (or only `columns` of them, as they were written)."""
    if columns is not None:
        schema = pa.schema([schema.field(n) for n in columns])
    if not folders:
        return ray.data.from_arrow(schema.empty_table())
    ds = ray.data.read_parquet(folders, columns=columns, partitioning=None, **READ_ARGS)
    return ds if columns is not None else ds.map_batches(_parted, fn_kwargs={"parts": part_of, "schema": schema},
                                                         **LIGHT)


SIDE_COLUMNS = ("doc_id", "doc_hash", "kind", "source")  # what `changes` compares of the last run's records


def _carried(ds: ray.data.Dataset, schema: pa.Schema, moved: dict, order: dict, part_of: dict) -> ray.data.Dataset:
    """The last run's records (`ds`) of the unchanged files, under this run's paths, order and parts, back to
    undecided."""
    return ds.map_batches(carry, fn_kwargs={"moved": moved}, **LIGHT) \
        .map_batches(add_positions, fn_kwargs={"files": order}, batch_format="pyarrow") \
        .map_batches(_parted, fn_kwargs={"parts": part_of, "schema": schema}, **LIGHT)


def _rewritten(decided, previous, schema, moved, order, part_of, root):
    """(the records to write: this run's new ones and the carried ones of every part whose decisions changed,
    with their text read back from the last run; the parts to link from the last run unchanged). A project
    moved to another root has every carried row's `source` changed: every part is written again."""
    fresh = decided.filter(expr=col("prev_kind").is_null())
    if previous.source_root != root:
        again = set(part_of.values())
    else:
        decisions = decided.select_columns(["part", *PREVIOUS, *PREVIOUS.values()])
        again = {row["part"] for row in decisions.map_batches(changed_parts, **LIGHT).take_all()}
    carried_parts = {part_of[path] for path in moved.values()}
    again &= carried_parts
    link = carried_parts - again
    if not again:
        return fresh, link
    changed = decided.filter(expr=col("prev_kind").is_not_null()) \
        .map_batches(parts.in_parts, fn_kwargs={"parts": again}, **LIGHT).select_columns(["pos", *PREVIOUS])
    # a part's decisions, as one table: proportional to the parts being rewritten, not to the corpus
    refs = changed.materialize().to_arrow_refs()
    decisions = _in_one_task(_or_empty_decisions, refs)
    texts = _carried(ray.data.read_parquet(parts.paths(previous.records, again), partitioning=None, **READ_ARGS),
                     schema, moved, order, part_of)
    texts = texts.map_batches(with_decisions, fn_kwargs={"decisions": decisions}, **LIGHT)
    return fresh.union(texts), link


def _ledger(previous: CorpusOutputs, uri: str):
    """The last run's ledger as of its manifest, when it has one to look the delta up in."""
    if previous.ledger_version is None:
        return None
    try:
        return ledger.open_at(uri, previous.ledger_version)
    except (ValueError, OSError, RuntimeError):  # removed, or that version cleaned up: every record's keys instead
        return None


def _affected(book, stale: set, new: ray.data.Dataset | None, previous: CorpusOutputs, cfg: CorpusConfig,
              schema: pa.Schema, moved: dict, order: dict, part_of: dict) -> ray.data.Dataset:
    """The carried records dedup must decide again: those in a key-sharing component with a new record or
    with one of the last run's that go (`ledger.affected`), as `_carried` gives them."""
    seeds = [new] if new is not None else []
    old = parts.paths(previous.records, stale)
    if old:
        seeds.append(ray.data.read_parquet(old, columns=[n for n in ledger.schema(cfg.dedup).names
                                                         if n in schema.names and n != "part"],
                                           partitioning=None, **READ_ARGS))
    refs = [ref for ds in seeds
            for ref in ds.map_batches(ledger.seed_keys, fn_kwargs={"cfg": cfg.dedup}, **LIGHT).to_arrow_refs()]
    found = _in_one_task(ledger.affected, refs, book.uri, book.version, sorted(stale), cfg.dedup)
    paths = {parts.part_id(os.path.relpath(p, previous.source_root)): p for p in moved}  # part -> last run's path
    ds = ray.data.from_arrow_refs([found]).map_batches(_from_ledger, fn_kwargs={"paths": paths}, **LIGHT)
    return _carried(ds, schema, moved, order, part_of)


def _from_ledger(batch: pa.Table, paths: dict[str, str]) -> pa.Table:
    """Ledger document rows as the last run's records (under the last run's path for their file)."""
    batch = batch.drop_columns(["key"])
    source = pa.array([paths[p] for p in batch["part"].to_pylist()], pa.string())
    return batch.append_column("source", source)


def _or_empty_decisions(t: pa.Table | None) -> pa.Table:
    return t if t is not None else pa.table({"pos": pa.array([], pa.int64()),
                                             **{n: pa.array([], pa.string()) for n in PREVIOUS}})


def _parted(batch: pa.Table, parts: dict[str, str], schema: pa.Schema) -> pa.Table:
    """`batch` in `schema` (which has `part`), with each row's part from its source."""
    return conform(with_part(batch, parts), schema)


def source_root(cfg: CorpusConfig) -> str:
    """What a source file's path is relative to, for the next run: a project moved or uploaded again
    (`ragworks submit`) finds its files unchanged."""
    path = Path(cfg.source.path)
    return str(path if path.is_dir() else path.parent)


def _keyed(batch: pa.Table, cfg, schema: pa.Schema, parts: dict[str, str]) -> pa.Table:
    return conform(with_part(with_keys(batch, cfg), parts), schema)


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
    if not (before.records and before.files and before.source_root and before.parted) \
            or not Folder(before.records).exists():
        return None  # a run before parts (nothing to link) or without records
    return before


def _with_ids(batch: pa.Table, ids, keep: bool) -> pa.Table:
    """The rows whose doc_id is (keep) or is not (not keep) in `ids`, a delta's ids in the object store."""
    ids = ray.get(ids) if isinstance(ids, ray.ObjectRef) else ids
    inside = pc.is_in(batch["doc_id"], value_set=ids).fill_null(False)
    return batch.filter(inside if keep else pc.invert(inside))


def _write_table(table: pa.Table, folder: Folder) -> None:
    import pyarrow.parquet as pq

    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    (folder / "ids.parquet").write_bytes(buffer.getvalue().to_pybytes())


def _read(path: str) -> ray.data.Dataset | None:
    return ray.data.read_parquet(path) if Folder(path).files(".parquet") else None


def count_outputs(outputs: dict[str, str], previous: CorpusOutputs | None = None, linked=frozenset()
                  ) -> dict[str, int]:
    """Every output folder counted; on an update, the last run's counts less those of its parts not linked,
    plus this run's written parts: an update reads the parts it wrote, not the corpus (the chunks of 1.5M
    rows took 3.5 s of a 1M-document update to count again)."""
    if previous is None:
        return _counts({k: [outputs[k]] for k in COUNTED})
    def unlinked(folder: str) -> list[str]:
        return parts.paths(folder, parts.present(folder) - set(linked))

    now = _counts({k: unlinked(outputs[k]) for k in COUNTED})
    before = _counts({k: unlinked(getattr(previous, k)) for k in COUNTED})
    return {k: previous.counts[k] - before[k] + now[k] for k in now}


COUNTED = ("chunks", "duplicates", "rejects")


def _counts(folders: dict[str, list[str]]) -> dict[str, int]:
    """The counts of the parquet folders `folders[kind]` (a folder, or part folders), from their footers but
    for the documents (a chunk_index column read, never the text)."""
    import pyarrow.dataset as pads

    def scan(kind: str) -> pads.Dataset | None:
        files = [f for p in folders[kind] for f in Folder(p).files(".parquet")]
        return pads.dataset([f.path for f in files], format="parquet", filesystem=files[0].fs) if files else None

    chunks, dups, rejects = (scan(k) for k in COUNTED)
    n_docs = chunks.count_rows(filter=pads.field("chunk_index") == 0) if chunks else 0
    n_dups, n_rejects = (d.count_rows() if d else 0 for d in (dups, rejects))
    return {"input_records": n_docs + n_dups + n_rejects, "documents": n_docs,
            "chunks": chunks.count_rows() if chunks else 0, "duplicates": n_dups, "rejects": n_rejects}


def print_counts(console, counts: dict[str, int], rejects_dir: str) -> None:
    table = progress_table("corpus")
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

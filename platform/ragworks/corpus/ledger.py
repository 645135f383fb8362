"""The dedup ledger: every decided document's dedup keys, looked up by key, so an update decides only what it touches.

Dedup's decision on a document depends only on the documents it shares a key
with, and on theirs in turn: its id (repeated ids), its content hash (exact
copies) and its LSH band keys (near copies). Each connected component of that
key-sharing graph is decided on its own, and the same way wherever it sits in the
corpus. So an update's decisions are a full rebuild's when dedup runs again over
the new documents and every carried document in a component with a new, changed or
deleted one; every other carried document keeps its last decision, since its
component is the same as last run's and so is the order among its members (a
file added between two others shifts both, not their order).

The ledger is a Lance table (`ledger.lance` in the stage folder) of one row per
(key, document) with a BTREE index on `key`, and one row per document (keyed by
its part and line) with what dedup compares and the decision it had. Finding a
delta's components is a breadth-first walk of lookups (the delta's keys, the
documents they hit, those documents' keys, ...) that reads the index pages of
the keys it asks for, not the corpus: datatrove's `MinhashDedupBuckets` checks new
documents against a stored band index the same way, but names no kept document and
cannot delete. The ledger mirrors the `records` parts: an update deletes the rows of
every part it wrote or removed and appends the rows of the parts it wrote, in
versions named by the stage's manifest; a killed update's later versions are
dropped by the next one (`open_at`).
"""

from __future__ import annotations

import hashlib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from .config import DedupConfig
from .dedup import band_keys, key_schema

NAME = "ledger.lance"
# kept on a document's row: the keys (to walk on from it) and the decision (to carry it when nothing changed)
DECISION = ("kind", "reason", "duplicate_of")
_DOC, _ID, _CONTENT = (np.uint64(s) for s in (0x5D0C5D0C5D0C5D0C, 0x1D1D1D1D1D1D1D1D, 0xC0C0C0C0C0C0C0C0))


def schema(cfg: DedupConfig) -> pa.Schema:
    fields = [pa.field("key", pa.int64()), pa.field("part", pa.string()), pa.field("line", pa.int64()),
              pa.field("doc_id", pa.string()), pa.field("doc_hash", pa.string())]
    fields += [f for f in key_schema(cfg) if f.name in ("chash", "sig")]
    return pa.schema(fields + [pa.field(n, pa.string()) for n in DECISION])


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: 64 well-mixed bits from any 64."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def doc_keys(part: pa.Array | pa.ChunkedArray, line: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A document's own key, from where it sits (its part, a 64-bit hex id, and its line)."""
    parts = np.array([int(p, 16) for p in part.to_pylist()], dtype=np.uint64)
    lines = pc.fill_null(line, 0).to_numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        return _mix(parts ^ _mix(lines ^ _DOC)).view(np.int64)


def dedup_keys(t: pa.Table, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(row of `t`, key) for every key each document of `t` has: its id, its content hash, its band keys."""
    if t.num_rows == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows, keys = [np.arange(t.num_rows)], []
    ids = [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") for i in t["doc_id"].to_pylist()]
    keys.append(_mix(np.array(ids, dtype=np.uint64) ^ _ID))
    if cfg.exact:
        chash = t["chash"].combine_chunks().cast(pa.binary(20))
        head = np.frombuffer(chash.buffers()[1], dtype=np.uint8).reshape(-1, 20)[chash.offset: chash.offset + len(chash)]
        rows.append(np.arange(t.num_rows))
        keys.append(_mix(np.ascontiguousarray(head[:, :8]).view(np.uint64).ravel() ^ _CONTENT))
    if cfg.near.enabled:
        bands = band_keys(t["sig"], cfg.near)
        rows.append(np.repeat(np.arange(t.num_rows), bands.shape[1]))
        keys.append(bands.ravel())
    return np.concatenate(rows), np.concatenate(keys).view(np.int64)


def rows(batch: pa.Table, cfg: DedupConfig) -> pa.Table:
    """The ledger rows of decided records: a document row each (its own key) and a row per dedup key. Records
    that never reached dedup (read and normalisation rejects: no content hash) have none."""
    out = schema(cfg)
    batch = batch.filter(pc.is_valid(batch["doc_hash"]))
    docs = pa.table({f.name: batch[f.name].cast(f.type) for f in out if f.name != "key"})
    docs = docs.append_column("key", pa.array(doc_keys(batch["part"], batch["line"]))).select(out.names)
    at, keys = dedup_keys(batch, cfg)
    index = pa.array(at)
    keyed = pa.table({"key": pa.array(keys), "part": batch["part"].take(index), "line": batch["line"].take(index)})
    nulls = {f.name: pa.nulls(keyed.num_rows, f.type) for f in out if f.name not in keyed.column_names}
    keyed = pa.table({**{n: keyed[n] for n in keyed.column_names}, **nulls}).select(out.names)
    return pa.concat_tables([docs, keyed.cast(out)])


def write(ds: ray.data.Dataset, uri: str, cfg: DedupConfig, append_to: int | None = None) -> int:
    """The rows of `ds`'s records into the ledger (a new one, or appended to version `append_to`); its version."""
    import lance

    from ..lance_sink import LanceFragments

    sink = LanceFragments(uri, append_to=append_to)
    ds.map_batches(rows, fn_kwargs={"cfg": cfg}, batch_format="pyarrow", num_cpus=0.25) \
        .write_datasink(sink, ray_remote_args={"num_cpus": 0.25})
    if not sink.rows and append_to is None:  # a corpus of rejects: an empty ledger all the same
        lance.write_dataset(schema(cfg).empty_table(), uri, mode="overwrite")
    ds = lance.dataset(uri)
    if sink.rows:
        if append_to is None or not ds.describe_indices():
            ds.create_scalar_index("key", "BTREE")
        else:
            ds.optimize.optimize_indices()
    return lance.dataset(uri).version


def open_at(uri: str, version: int):
    """The ledger as of `version` (the last manifest's): a killed update's later versions are undone by a
    restore, and the versions before it removed (the corpus stage alone reads the ledger; `version` itself
    stays until a manifest names a later one, for a run killed again)."""
    import lance

    ds = lance.dataset(uri)
    older = [v["version"] for v in ds.versions() if v["version"] < version]
    if older:
        ds.cleanup_old_versions(versions=older)
    if ds.version != version:
        lance.dataset(uri, version=version).restore()
        ds = lance.dataset(uri)
    return ds


def drop_parts(ds, parts) -> int:
    """Every row of `parts` out (the parts an update rewrites or whose file went); the new version."""
    import lance

    names = sorted(parts)
    for i in range(0, len(names), 500):
        ds.delete("part IN (" + ", ".join(f"'{p}'" for p in names[i: i + 500]) + ")")
    return lance.dataset(ds.uri).version


def _lookup(ds, keys: np.ndarray, columns: list[str], stale: pa.Array) -> pa.Table:
    if not len(keys):
        return pa.table({c: pa.array([], ds.schema.field(c).type) for c in columns})
    found = ds.to_table(filter=pc.field("key").isin(pa.array(keys, pa.int64())), columns=columns)
    return found.filter(pc.invert(pc.is_in(found["part"], value_set=stale)))


def affected(uri: str, version: int, stale_parts: list[str], cfg: DedupConfig, seeds: pa.Table | None) -> pa.Table:
    """The document rows of every carried document in a component with a seed key (`seeds["key"]`: the new
    documents' keys and those of the last run's documents that go). Documents of `stale_parts` (the files read
    again or removed) are the last run's versions: never carried. Runs in one task (`dedup._in_one_task`):
    it holds the delta's components, not the corpus."""
    import lance

    ds = lance.dataset(uri, version=version)
    stale = pa.array(stale_parts, pa.string())
    columns = schema(cfg).names
    asked = np.zeros(0, dtype=np.int64)
    frontier = np.unique(seeds["key"].to_numpy()) if seeds is not None and seeds.num_rows else asked
    found, have = [], np.zeros(0, dtype=np.int64)
    while len(frontier):
        asked = np.union1d(asked, frontier)
        hits = _lookup(ds, frontier, ["part", "line"], stale)
        docs = np.setdiff1d(np.unique(doc_keys(hits["part"], hits["line"])), have)
        if not len(docs):
            break
        rows_ = _lookup(ds, docs, columns, stale)
        rows_ = rows_.filter(pc.is_valid(rows_["doc_id"]))  # document rows (a key row may share a doc's key)
        have = np.union1d(have, docs)
        found.append(rows_)
        _, keys = dedup_keys(rows_, cfg)
        frontier = np.setdiff1d(np.unique(keys), asked)
    return pa.concat_tables(found) if found else schema(cfg).empty_table()


def seed_keys(batch: pa.Table, cfg: DedupConfig) -> pa.Table:
    """The dedup keys of records (new ones, or the last run's that go) as a one-column table."""
    batch = batch.filter(pc.is_valid(batch["doc_hash"]))
    return pa.table({"key": pa.array(dedup_keys(batch, cfg)[1], pa.int64())})

"""A corpus delta applied to the LanceDB table in place: the live index follows the corpus with no rebuild.

The corpus stage says which documents changed (`CorpusDelta`): every chunk of a
replaced document is deleted (document granularity: a document that shrank
leaves no orphan chunk), the upserted documents' new chunks are embedded in the
same actor pool a full build uses and appended in one commit, then the indexes
are brought up to date. Searches stay right between the commits (LanceDB scans
the rows no index covers yet), and a server only moves to the new version when
the manifest names it.

Exactly once: the manifest names the table version it was built to. Versions
after it are a killed update's (its delete, maybe its append), so an update
first restores the manifest's version, then applies the whole delta again: a
re-run after a kill at any point converges to the uninterrupted table, with no
chunk twice and no delete lost. One writer at a time (the runner).

Index upkeep, the policy (checked facts in `shared/design/live-corpus.md`):
- full-text: the new rows go into an index segment of their own, as the vector
  index's below (merging them into the one index rewrites it: 7 s of a
  1M-document update, growing with the table), and deleted ones are hidden; it
  is rebuilt once the rows deleted since it was built pass
  `fulltext.rebuild_fraction` of the table, since BM25 statistics keep counting
  deleted rows until then. A rebuild reads every row (7 s of a 100k-document
  update's 13 s index upkeep), and the drift is small: on 157k chunks with 1% of
  documents deleted and 1% added, the top-10 sets of 300 queries overlap a
  rebuild's by 0.998 (0.995 at 5% deleted), though only 81% of the lists are in
  the same order (`benchmarks/delta_ingest.py` measures it end to end);
- vector: the new rows are assigned to the trained partitions, in an index
  segment of their own: merging them into the one index rewrites every row's
  codes (on IVF_SQ, 31 s of a 1M-document update's 122 s at 1.5M rows; a new
  segment is a few hundred ms), and a search reads every segment with the same
  centroids, so its hits are the merged index's. Once more than
  `update.max_index_segments` delta segments are kept they are merged into one
  (the first, trained segment is never rewritten: that cost grows with the
  table). It is retrained when the rows added since its training pass
  `update.retrain_fraction` of the rows it was trained on (the centroids drift),
  which leaves one segment again, and built once the table reaches `ann.min_rows`;
- fragments: the small ones a delta writes are compacted once there are more
  than `update.max_small_fragments` of them; the full build's are left alone
  (LanceDB's `optimize()` rewrote a whole 40M-row index, lancedb#1502).
The served version is tagged, so a cleanup of old versions keeps it.
"""

from __future__ import annotations

import lance
import lancedb
import ray

from . import IndexOutputs
from .config import IndexConfig

SERVED_TAG = "served"
ROWS_PER_WRITE = 65_536
DELETE_BATCH = 2_000  # ids per delete predicate


def applicable(ctx, corpus, embedder: str) -> tuple[IndexOutputs | None, str]:
    """(the last index, when this run can update it in place; why not, otherwise)."""
    if ctx.previous is None:
        return None, "no earlier index with this config"
    if corpus.delta is None:
        return None, "the corpus stage rebuilt everything"
    if not corpus.updates(ctx.previous):
        return None, "the last index was built from another corpus run than the delta's base"
    before = IndexOutputs.from_manifest(ctx.previous)
    if before.embedder != embedder:
        return None, f"the embedder changed ({before.embedder} -> {embedder})"
    if before.version is None:
        return None, "the last index names no table version"
    try:
        lance.dataset(f"{before.lancedb}/{before.table}.lance", version=before.version)
    except (ValueError, OSError, RuntimeError) as err:
        return None, f"its table cannot be opened at version {before.version} ({err})"
    return before, ""


def apply_delta(cfg: IndexConfig, ctx, corpus, before: IndexOutputs, embed) -> IndexOutputs:
    """`embed(ds)`: the chunks with their vectors, the full build's own pipeline."""
    uri = f"{before.lancedb}/{before.table}.lance"
    ds = lance.dataset(uri)
    if ds.version != before.version:  # a killed update's versions: start again from the manifest's
        ctx.console.print(f"table at version {ds.version}, manifest at {before.version}: an update was cut short; "
                          "restoring the manifest's version and applying the delta again")
        ds = lance.dataset(uri, version=before.version)
        ds.restore()
        ds = lance.dataset(uri)
    rows_before = ds.count_rows()
    ids = sorted(corpus.delta.replaced_ids().to_pylist())
    deleted = 0
    for i in range(0, len(ids), DELETE_BATCH):
        literals = ", ".join("'" + d.replace("'", "''") + "'" for d in ids[i: i + DELETE_BATCH])
        before_rows = ds.count_rows()
        ds.delete(f"doc_id IN ({literals})")
        ds = lance.dataset(uri)
        deleted += before_rows - ds.count_rows()
    from .index import TABLE_COLUMNS
    from ..lance_sink import LanceFragments

    chunks = ray.data.read_parquet(corpus.delta.chunks)
    added = 0
    if chunks.count():
        sink = LanceFragments(uri, ROWS_PER_WRITE, append_to=ds.version)
        embed(chunks.select_columns(TABLE_COLUMNS)).write_datasink(sink, ray_remote_args={"num_cpus": 0.25})
        added = sink.rows
    ds = lance.dataset(uri)
    rows = ds.count_rows()
    if rows != rows_before - deleted + added:
        raise RuntimeError(f"{uri}: {rows:,} rows after the update, expected {rows_before:,} - {deleted:,} + {added:,}")
    ctx.console.print(f"index updated in place: {deleted:,} chunks deleted, {added:,} added ({rows:,} rows)")
    indexes, ann_rows, fts_deleted = upkeep(cfg, ctx, before, rows, deleted, added)
    table = lancedb.connect(before.lancedb).open_table(before.table)
    tag(uri, table.version)
    return before.model_copy(update={"indexes": indexes, "version": table.version, "ann_rows": ann_rows,
                                     "fts_deleted": fts_deleted,
                                     "counts": {"rows": rows, "deleted": deleted, "added": added}})


def upkeep(cfg: IndexConfig, ctx, before: IndexOutputs, rows: int, deleted: int, added: int
           ) -> tuple[list[str], int, int]:
    """The policy in the module docstring; returns the index names, the rows the vector index was trained on
    and the rows deleted since the full-text index was built."""
    from .index import ann_config, create_fts

    uri = f"{before.lancedb}/{before.table}.lance"
    ds = lance.dataset(uri)
    small = [f for f in ds.get_fragments() if f.count_rows() < ROWS_PER_WRITE // 2]
    if len(small) > cfg.update.max_small_fragments:
        ctx.console.print(f"compacting {len(small)} small fragments")
        ds.optimize.compact_files(target_rows_per_fragment=ROWS_PER_WRITE)
        ds = lance.dataset(uri)
    table = lancedb.connect(before.lancedb).open_table(before.table)
    indexes, ann_rows = [], before.ann_rows
    has_ann = cfg.ann.index_type in before.indexes
    if has_ann and ann_rows and rows - ann_rows > cfg.update.retrain_fraction * ann_rows:
        ctx.console.print(f"retraining the vector index: {rows - ann_rows:,} rows since it was trained on {ann_rows:,}")
        table.create_index("vector", config=ann_config(cfg), replace=True)
        ann_rows = rows
    elif has_ann and added:
        fold_index(ds, "vector", cfg.update.max_index_segments)
    elif not has_ann and rows >= max(cfg.ann.min_rows, 1):
        ctx.console.print(f"building {cfg.ann.index_type} vector index over {rows:,} rows")
        table.create_index("vector", config=ann_config(cfg))
        has_ann, ann_rows = True, rows
    if has_ann:
        indexes.append(cfg.ann.index_type)
    stale = before.fts_deleted + deleted
    if cfg.fulltext.enabled:
        if "FTS" not in before.indexes or (stale and stale >= cfg.fulltext.rebuild_fraction * rows):
            if "FTS" in before.indexes:
                ctx.console.print(f"rebuilding the full-text index: {stale:,} rows deleted since it was built, "
                                  f"fulltext.rebuild_fraction={cfg.fulltext.rebuild_fraction} of {rows:,}")
            create_fts(table, cfg)
            stale = 0
        elif added:
            fold_index(lance.dataset(uri), "text", cfg.update.max_index_segments)
        indexes.append("FTS")
    return indexes, ann_rows, stale


def fold_index(ds, column: str, max_segments: int) -> None:
    """The new rows in a delta segment of `column`'s index; the delta segments merged once past `max_segments`."""
    index = _index(ds, column)
    deltas = len(index.segments) - 1
    # `num_indices_to_merge` counts the newest segments: 0 writes a new one, `deltas` leaves the trained one alone
    ds.optimize.optimize_indices(index_names=[index.name], num_indices_to_merge=0 if deltas < max_segments else deltas)


def _index(ds, column: str):
    for index in ds.describe_indices():
        if column in index.field_names:
            return index
    raise KeyError(f"no index on '{column}'")


def tag(uri: str, version: int) -> None:
    """The served version tagged: `cleanup_old_versions` keeps tagged versions (a replica may still read it)."""
    tags = lance.dataset(uri).tags
    if SERVED_TAG in tags.list():
        tags.update(SERVED_TAG, version)
    else:
        tags.create(SERVED_TAG, version)


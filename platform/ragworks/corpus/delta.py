"""A corpus that changes: what a re-run over changed input must redo, found against the last run's records.

The corpus stage keeps every input record it decided (`records`: the normalised
text, its content hash, its dedup keys and the decision), and the fingerprint of
every source file. A re-run with the same recipe (the stage's config and
tokenizer) reads only the files whose fingerprint changed, carries the records of
every other file over as they were, and decides dedup again over both, so each
decision is a full rebuild's on the same final input: the copy kept is the
earliest by (file, line) in the final input's file order, whatever order the
files or documents arrived in over the corpus's life.

What changed is then a keyed pass on `doc_id` (`ordering.per_key`: one task for a
small delta, a hash shuffle otherwise), never a set in the driver: the documents
of the touched files before and after (added, changed, deleted, unchanged), and
every carried document whose decision flipped (a deleted original makes its copy
the kept one; a new earlier copy makes the original a duplicate). Their union is
what the index replaces, at document granularity: `replace` (every chunk of the
document goes), and `upsert` (its new chunks come in). LangChain's indexing API
and LlamaIndex's ingestion pipeline skip unchanged documents the same way, by
hash, but in one process and with no near-duplicate check.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.expressions import col

from ..ordering import per_key
from .records import set_column

STATUSES = ("added", "changed", "deleted", "unchanged")
SIDES = pa.schema([("doc_id", pa.string()), ("doc_hash", pa.string()), ("kept", pa.bool_()), ("old", pa.bool_())])
ACTIONS = pa.schema([("doc_id", pa.string()), ("status", pa.string()), ("upsert", pa.bool_()),
                     ("replace", pa.bool_())])


def touched_files(before: dict[str, str], before_root: str, now: dict[str, str], root: str):
    """(this run's files to read: added or changed; the last run's paths of the files changed or removed, whose
    records go; the last run's path -> this run's for every unchanged file, whose records are carried; the
    number of files removed). Files are matched by their path under the source root and compared by
    fingerprint, so a project moved or uploaded again (`ragworks submit`) reads nothing again."""
    was = {os.path.relpath(p, before_root): p for p in before}
    now_rel = {os.path.relpath(p, root): p for p in now}
    read = sorted(p for r, p in now_rel.items() if r not in was or before[was[r]] != now[p])
    moved = {was[r]: p for r, p in now_rel.items() if r in was and before[was[r]] == now[p]}
    gone = sorted(p for p in before if p not in moved)
    return read, gone, moved, sum(1 for r in was if r not in now_rel)


def renames(before: dict[str, str], before_root: str, now: dict[str, str], root: str) -> dict[str, str]:
    """The last run's path -> this run's for every file in both (matched by its path under the root)."""
    now_rel = {os.path.relpath(p, root): p for p in now}
    return {p: now_rel[r] for p in before if (r := os.path.relpath(p, before_root)) in now_rel}


def renamed(batch: pa.Table, paths: dict[str, str]) -> pa.Table:
    """Rows of the last run under this run's path for their file (`paths`, from `renames`)."""
    old, new = pa.array(list(paths), pa.string()), pa.array(list(paths.values()), pa.string())
    source = pc.coalesce(new.take(pc.index_in(batch["source"], value_set=old)), batch["source"])
    return batch.set_column(batch.schema.get_field_index("source"), "source", source)


def in_sources(batch: pa.Table, sources) -> np.ndarray:
    sources = pa.array(list(sources), pa.string()) if not isinstance(sources, pa.Array) else sources
    return pc.is_in(batch["source"], value_set=sources).fill_null(False).to_numpy(zero_copy_only=False)


def carry(batch: pa.Table, moved: dict[str, str]) -> pa.Table:
    """Last run's records of the unchanged files (under this run's path for them), back to undecided: dedup
    decides them again beside the new ones. `prev_*` keep the decision they had, to tell which changed."""
    batch = renamed(batch.filter(pa.array(in_sources(batch, moved))), moved)
    decided = pc.is_valid(batch["doc_hash"])  # reached dedup (read and normalisation rejects have no hash)
    out = batch
    for name in ("kind", "reason", "duplicate_of"):
        out = set_column(out, PREVIOUS[name], batch[name])
    for name, value in (("kind", pa.scalar("doc")), ("reason", pa.scalar(None, pa.string())),
                        ("duplicate_of", pa.scalar(None, pa.string()))):
        out = set_column(out, name, pc.if_else(decided, value, batch[name]).cast(pa.string()))
    return out


PREVIOUS = {"kind": "prev_kind", "reason": "prev_reason", "duplicate_of": "prev_of"}


def is_carried(batch: pa.Table) -> pa.Array:
    """Rows carried from the last run (a new record has no previous decision)."""
    return pc.is_valid(batch["prev_kind"])


def changed_parts(batch: pa.Table) -> pa.Table:
    """The parts of the carried records whose decision (kind, reason, duplicate named) is not the last run's."""
    batch = batch.filter(is_carried(batch))
    differ = pa.array([False] * batch.num_rows, pa.bool_())
    for name, prev in PREVIOUS.items():
        differ = pc.or_(differ, pc.fill_null(pc.not_equal(batch[name], batch[prev]),
                                             pc.xor(pc.is_null(batch[name]), pc.is_null(batch[prev]))))
    return pa.table({"part": pc.unique(batch["part"].filter(differ))})


def with_decisions(batch: pa.Table, decisions) -> pa.Table:
    """Carried records (with their text) given this run's decisions (`decisions`: pos -> kind, reason,
    duplicate_of, of the parts being rewritten). A record dedup did not see this run (its component had no
    change, `ledger.affected`) keeps the decision it had."""
    table = ray.get(decisions) if isinstance(decisions, ray.ObjectRef) else decisions
    at = pc.index_in(batch["pos"], value_set=table["pos"])
    seen = pc.is_valid(at)
    for name, prev in PREVIOUS.items():
        batch = set_column(batch, name, pc.if_else(seen, table[name].take(at).cast(pa.string()),
                                                   batch[prev].cast(pa.string())))
    return batch


def sides(batch: pa.Table, touched, old: bool) -> pa.Table:
    """A touched file's records as one side of the comparison: id, hash, kept or not."""
    has_id = batch["doc_id"].is_valid().to_numpy(zero_copy_only=False)
    batch = batch.filter(pa.array(in_sources(batch, touched) & has_id))
    n = batch.num_rows
    return pa.table({"doc_id": batch["doc_id"], "doc_hash": batch["doc_hash"],
                     "kept": pc.equal(batch["kind"], "doc").fill_null(False), "old": pa.array([old] * n, pa.bool_())},
                    schema=SIDES)


def flips(batch: pa.Table, touched) -> pa.Table:
    """Carried documents (not from a file read this run) whose decision changed: kept now and not before
    (upsert), or the other way (drop)."""
    batch = batch.filter(pa.array(~in_sources(batch, touched)))
    was = pc.equal(batch["prev_kind"], "doc").fill_null(False).to_numpy(zero_copy_only=False)
    now = pc.equal(batch["kind"], "doc").fill_null(False).to_numpy(zero_copy_only=False)
    flipped = (was != now) & pc.is_valid(batch["doc_hash"]).to_numpy(zero_copy_only=False)
    ids = batch["doc_id"].filter(pa.array(flipped))
    n = len(ids)
    return pa.table({"doc_id": ids, "status": pa.nulls(n, pa.string()), "upsert": pa.array(now[flipped], pa.bool_()),
                     "replace": pa.array([True] * n, pa.bool_())}, schema=ACTIONS)


def _per_id(t: pa.Table, which: str) -> pa.Table:
    """Per doc_id of one side: its kept record's hash (null when none is kept) and any record's hash."""
    side = t.filter(pc.equal(t["old"], which == "old"))
    anyhash = side.group_by("doc_id").aggregate([("doc_hash", "min")]).rename_columns(["doc_id", f"{which}_any"])
    kept = side.filter(side["kept"]).group_by("doc_id").aggregate([("doc_hash", "min")]) \
        .rename_columns(["doc_id", f"{which}_kept"])
    return anyhash.join(kept, "doc_id", join_type="left outer")


def classify(t: pa.Table) -> pa.Table:
    """Per doc_id (`t` holds every row of the ids it holds): its status, and what the index must do."""
    if t.num_rows == 0:
        return ACTIONS.empty_table()
    both = _per_id(t, "old").join(_per_id(t, "new"), "doc_id", join_type="full outer")
    had, has = pc.is_valid(both["old_any"]), pc.is_valid(both["new_any"])
    status = pc.if_else(pc.invert(had), "added", pc.if_else(pc.invert(has), "deleted", pc.if_else(
        pc.equal(pc.coalesce(both["old_kept"], both["old_any"]), pc.coalesce(both["new_kept"], both["new_any"])),
        "unchanged", "changed")))
    old_kept, new_kept = both["old_kept"], both["new_kept"]
    differ = pc.fill_null(pc.not_equal(old_kept, new_kept), True)
    upsert = pc.and_(pc.is_valid(new_kept), differ)
    drop = pc.and_(pc.is_valid(old_kept), differ)
    return pa.table({"doc_id": both["doc_id"], "status": status, "upsert": upsert, "replace": pc.or_(upsert, drop)},
                    schema=ACTIONS)


def _counts(t: pa.Table) -> pa.Table:
    return pa.table({s: pa.array([pc.sum(pc.equal(t["status"], s)).as_py() or 0], pa.int64()) for s in STATUSES})


def changes(previous: ray.data.Dataset, records: ray.data.Dataset, gone: list[str], read: list[str]
            ) -> tuple[pa.Table, dict]:
    """(the document ids to upsert and to replace, the touched files' documents by status): the touched files'
    documents before and after, joined on doc_id, and the carried documents whose decision flipped. Only the
    ids the index must touch reach the driver (a delta's, not the corpus's)."""
    gone, read = pa.array(gone, pa.string()), pa.array(read, pa.string())
    light = {"batch_format": "pyarrow", "num_cpus": 0.25}
    old = previous.map_batches(sides, fn_kwargs={"touched": gone, "old": True}, **light)
    new = records.map_batches(sides, fn_kwargs={"touched": read, "old": False}, **light)
    rows = int(old.count()) + int(new.count())
    classified = per_key(old.union(new), "doc_id", classify, rows=rows, num_cpus=0.25).materialize()
    counts = {s: 0 for s in STATUSES}
    for row in classified.map_batches(_counts, **light).take_all():
        for s in STATUSES:
            counts[s] += int(row[s])
    flipped = records.map_batches(flips, fn_kwargs={"touched": read}, **light)
    todo = classified.union(flipped).filter(expr=col("replace")).select_columns(["doc_id", "upsert"])
    blocks = [t for t in ray.get(todo.to_arrow_refs()) if t.num_rows]
    actions = pa.concat_tables(blocks) if blocks else pa.table({"doc_id": pa.array([], pa.string()),
                                                               "upsert": pa.array([], pa.bool_())})
    # one row per id: a document kept from another file than before is dropped there and upserted here
    upsert = pc.unique(actions["doc_id"].filter(actions["upsert"]))
    replace = pc.unique(actions["doc_id"])
    counts.update(upsert=len(upsert), replace=len(replace))
    return pa.table({"doc_id": replace, "upsert": pc.is_in(replace, value_set=upsert)}), counts


def documents(n: int) -> str:
    return f"{n:,} document" + ("" if n == 1 else "s")


def summary(counts: dict) -> str:
    return ", ".join(f"{counts[s]:,} {s}" for s in STATUSES)

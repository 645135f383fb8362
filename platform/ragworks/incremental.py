"""Output written as it is produced, so an interrupted stage resumes where it stopped.

Each generated block is written as one Parquet file per partition (`write_block`),
by the worker that generated it, into a folder of the run's own (an attempt). After a
kill the attempts hold whole files and at most a few truncated ones; truncated files
are removed, the keys in the whole ones are not generated again, and when the stage
finishes `commit` moves every attempt's rows into the output, one row per key.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from .storage import Folder


def parquet_files(folder: str | Folder) -> list[Folder]:
    return Folder(folder).files(".parquet")


def read_footers(folder: str | Folder) -> tuple[list[tuple[Folder, int]], list[Folder]]:
    """(every whole file with its row count, the files deleted): a file a kill left half-written has no
    footer. An object store never shows a half-uploaded object, so there only a corrupt one is found."""
    whole, dropped = [], []
    for f in parquet_files(folder):
        try:
            whole.append((f, pq.read_metadata(f.path, filesystem=f.fs).num_rows))
        except Exception:  # noqa: BLE001 - any unreadable file is a partial one
            f.unlink()
            dropped.append(f)
    return whole, dropped


def drop_partial_files(folder: str | Folder) -> list[Folder]:
    """Delete files a kill left half-written; returns them."""
    return read_footers(folder)[1]


def read_columns(folder: str | Folder, columns: list[str]) -> Iterator[tuple[Folder, pa.Table]]:
    """Each written file's `columns`, one file at a time: counts without loading a dataset."""
    for f in parquet_files(folder):
        yield f, pq.read_table(f.path, columns=columns, filesystem=f.fs)


ATTEMPTS = "_attempts"


def attempt_folder(stage_dir: Folder) -> Folder:
    """Where this run writes its rows: a folder of its own, named so attempts sort by start time."""
    return Folder(stage_dir) / ATTEMPTS / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def write_block(table: pa.Table, folder: str, partition: str = "status", key: str = "key") -> pa.Table:
    """One block's rows written at once, one file per `partition` value, named by the block's keys: the same
    input block always lands on the same object (a dead run's late write and its rewrite replace each other),
    and each file appears whole or not at all (`Folder.write_bytes`). Returns one null per row written: no
    data to hold or move, yet Ray Data's row counts (the progress line, the stats) count generated rows."""
    if table.num_rows:
        name = hashlib.sha1("\n".join(sorted(table[key].to_pylist())).encode()).hexdigest()[:24]
        for value in pc.unique(table[partition]).to_pylist():
            part = table.filter(pc.equal(table[partition], value)).drop_columns([partition])
            buffer = pa.BufferOutputStream()
            pq.write_table(part, buffer)
            (Folder(folder) / f"{partition}={value}" / f"{name}.parquet").write_bytes(buffer.getvalue().to_pybytes())
    return pa.table({"written": pa.nulls(table.num_rows)})


CARRIED = "0" * 20  # the attempt holding an update's rows from the last run: it sorts first, so its copies win


def carry_last_run(output: Folder, attempts: Folder, replaced, selected=None, regenerate: str | None = None
                   ) -> tuple[int, int]:
    """A corpus update: the last run's rows become this run's first attempt, less the rows of documents the
    update replaced (`replaced`: their ids) and, when the stage works on a selection of chunks (`limit`),
    the rows of chunks no longer selected (`selected`: the chunk ids), and rows whose key starts with
    `regenerate` (made without an engine: cheaper to make again than to check). The resume machinery then
    generates only what is missing, and `commit` makes the output. Returns (rows kept, rows dropped).
    Idempotent: a run killed half-way through carries the same rows again. A task filters each file."""
    carried = attempts / CARRIED
    if output.exists() and not carried.exists():
        output.move_to(carried)
    files = parquet_files(carried)
    if not files:
        return 0, 0
    refs = (ray.put(replaced), ray.put(selected))
    results = ray.get([_keep_rows.remote(f, *refs, regenerate) for f in files])
    return sum(k for k, _ in results), sum(d for _, d in results)


def _keep(table: pa.Table, replaced, selected, regenerate: str | None) -> pa.Table:
    keep = pc.invert(pc.is_in(table["doc_id"], value_set=replaced).fill_null(False))
    if selected is not None:
        keep = pc.and_(keep, pc.is_in(table["id"], value_set=selected).fill_null(False))
    if regenerate:
        keep = pc.and_(keep, pc.invert(pc.starts_with(table["key"], regenerate)))
    return table.filter(keep)


@ray.remote(num_cpus=0.25)
def _keep_rows(f: Folder, replaced, selected, regenerate: str | None) -> tuple[int, int]:
    table = pq.read_table(f.path, filesystem=f.fs)
    kept = _keep(table, replaced, selected, regenerate)
    if kept.num_rows != table.num_rows:
        buffer = pa.BufferOutputStream()
        pq.write_table(kept, buffer)
        f.write_bytes(buffer.getvalue().to_pybytes())  # replaced whole, never half-written
    return kept.num_rows, table.num_rows - kept.num_rows


def not_written(rows, attempts: Folder, key: str = "key"):
    """The rows of `rows` whose key no earlier attempt wrote: a left anti-join in Ray Data, so no process
    (the driver included) holds the written keys, however many there are."""
    if not parquet_files(attempts):
        return rows
    written = ray.data.read_parquet(str(attempts), partitioning=None, num_cpus=0.25).select_columns([key])
    partitions = max(2, int(ray.cluster_resources().get("CPU", 2)))
    return rows.join(written, join_type="left_anti", num_partitions=partitions, on=(key,),
                     aggregator_ray_remote_args={"num_cpus": 0.25})


def commit(attempts: Folder, target: Folder, key: str = "key") -> int:
    """Every attempt's whole files moved into `target`, one row per key; returns the rows dropped.

    Exactly once by construction, whatever the timing: a run killed mid-stream may leave workers that
    write a block after the next run listed what was written, so that block is generated twice. Here the
    files are listed once (the snapshot), each key keeps its copy from the earliest attempt (then file
    name), the later copies are cut out of their files, and only the snapshot's files are moved: a file a
    dead run writes after it lands in its attempt folder, which no reader of `target` ever sees. The
    duplicate keys are found by a keyed pass (`ordering.per_key`: in one task up to ONE_TASK_ROWS rows,
    which the files' footers tell, else a hash shuffle); only they (at most a block or two per kill) reach
    the driver.
    """
    from .ordering import per_key

    attempts = Folder(attempts)
    whole, _ = read_footers(attempts)
    files = [f for f, _ in whole]
    target.mkdir()
    if not files:
        return 0
    paths = [f.path for f in files]
    keys = ray.data.read_parquet(paths, filesystem=attempts.fs, partitioning=None, include_paths=True,
                                 num_cpus=0.25).select_columns([key, "path"])
    # every copy of a key meets its twins in one call (in one task when the footers' count is small)
    copies = per_key(keys, key, repeated, rows=sum(n for _, n in whole), fn_kwargs={"key": key},
                     num_cpus=0.25).take_all()
    dropped = 0
    if copies:
        first: dict[str, str] = {}
        for c in sorted(copies, key=lambda c: c["path"]):
            first.setdefault(c[key], c["path"])
        cut: dict[str, set] = {}
        for c in copies:
            if first[c[key]] != c["path"]:
                cut.setdefault(c["path"], set()).add(c[key])
        by_path = {f.path: f for f in files}
        for path, drop in cut.items():
            f = by_path[path]
            table = pq.read_table(f.path, filesystem=f.fs)
            kept = table.filter(pc.invert(pc.is_in(table[key], value_set=pa.array(sorted(drop)))))
            dropped += table.num_rows - kept.num_rows
            buffer = pa.BufferOutputStream()
            pq.write_table(kept, buffer)
            f.write_bytes(buffer.getvalue().to_pybytes())  # replaced whole, never half-written
    base = attempts.path.rstrip("/") + "/"
    for f in files:
        attempt, *folders, name = f.path[len(base):].split("/")
        destination = target / "/".join([*folders, f"{attempt}-{name}"])
        if destination.is_local:
            os.makedirs(os.path.dirname(destination.path), exist_ok=True)
        f.move_to(destination)
    attempts.remove()
    return dropped


def repeated(t: pa.Table, key: str) -> pa.Table:
    """The rows of `t` whose `key` appears more than once in it."""
    counts = t.group_by(key).aggregate([(key, "count")])
    twice = counts.filter(pc.greater(counts[f"{key}_count"], 1))[key]
    return t.filter(pc.is_in(t[key], value_set=twice))


def string_columns(table: pa.Table, names: tuple[str, ...]) -> pa.Table:
    """A batch with no value in a column infers it as null; every written file must agree on string."""
    for name in names:
        i = table.schema.get_field_index(name)
        if i >= 0 and pa.types.is_null(table.schema.field(i).type):
            table = table.set_column(i, name, table.column(i).cast(pa.string()))
    return table

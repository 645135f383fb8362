"""Output written as it is produced, so an interrupted stage resumes where it stopped.

Ray Data writes one Parquet file per block as the stream runs. After a kill the
folder holds whole files and at most a few truncated ones; truncated files are
removed, and the keys in the whole ones are not generated again.
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .storage import Folder


def parquet_files(folder: str | Folder) -> list[Folder]:
    return Folder(folder).files(".parquet")


def drop_partial_files(folder: str | Folder) -> list[Folder]:
    """Delete files a kill left half-written (their footer is missing). An object store never shows a
    half-uploaded object, so there only a corrupt one is found."""
    dropped = []
    for f in parquet_files(folder):
        try:
            pq.read_metadata(f.path, filesystem=f.fs)
        except Exception:  # noqa: BLE001 - any unreadable file is a partial one
            f.unlink()
            dropped.append(f)
    return dropped


def read_columns(folder: str | Folder, columns: list[str]) -> Iterator[tuple[Folder, pa.Table]]:
    """Each written file's `columns`, one file at a time: counts without loading a dataset."""
    for f in parquet_files(folder):
        yield f, pq.read_table(f.path, columns=columns, filesystem=f.fs)


def done_keys(folder: str | Folder, column: str = "key") -> set[str]:
    """Keys already written; only the key column is read."""
    keys: set[str] = set()
    for _, t in read_columns(folder, [column]):
        keys.update(t.column(column).to_pylist())
    return keys


def skip_done(batch, done: set[str], column: str = "key"):
    """Ray Data batch function (pyarrow): rows whose key is not written yet."""
    import pyarrow.compute as pc

    if not done:
        return batch
    return batch.filter(pc.invert(pc.is_in(batch[column], value_set=pa.array(sorted(done)))))


def string_columns(table: pa.Table, names: tuple[str, ...]) -> pa.Table:
    """A batch with no value in a column infers it as null; every written file must agree on string."""
    for name in names:
        i = table.schema.get_field_index(name)
        if i >= 0 and pa.types.is_null(table.schema.field(i).type):
            table = table.set_column(i, name, table.column(i).cast(pa.string()))
    return table

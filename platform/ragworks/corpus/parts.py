"""The corpus stage's outputs, one part per source file, so an update rewrites only what it touched.

Every output folder (`records`, `chunks`, `duplicates`, `rejects`) is written
Hive-partitioned on `part`, a hash of the source file's path under the source
root (`part=<hash>/*.parquet`): each file holds the rows of one source file. An
update writes the parts of the files it read and of the carried records whose
decision changed, and links every other part from the last run's folder (a hard
link on disk, a copy inside the store elsewhere): a 1% change of a corpus spread
over many files costs the files it touched, not the corpus. Readers that list a
folder (`ray.data.read_parquet(folder)`) get a `part` column beside the rows.
"""

from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray

from ..checkpoint import WRITE_ARGS
from ..storage import Folder
from .records import set_column

PREFIX = "part="


def part_id(relative_path: str) -> str:
    return hashlib.sha1(relative_path.encode()).hexdigest()[:16]


def part_ids(files, root: str) -> dict[str, str]:
    """This run's source path -> its part: named by the path under the root, so a moved project keeps them."""
    return {path: part_id(os.path.relpath(path, root)) for path in files}


def with_part(batch: pa.Table, parts: dict[str, str]) -> pa.Table:
    """`batch` with its rows' `part`, from their `source` (`parts` holds one entry per source file)."""
    paths, ids = pa.array(list(parts), pa.string()), pa.array(list(parts.values()), pa.string())
    return set_column(batch, "part", ids.take(pc.index_in(batch["source"], value_set=paths)))


def in_parts(batch: pa.Table, parts) -> pa.Table:
    inside = pc.is_in(batch["part"], value_set=pa.array(list(parts), pa.string())).fill_null(False)
    return batch.filter(inside)


def write(ds: ray.data.Dataset, target: str) -> None:
    """`ds` (with a `part` column) into `target`, a folder per part. A resumed run's half-written folder goes
    first; an empty result is an empty folder."""
    folder = Folder(target)
    folder.remove()
    ds.write_parquet(target, partition_cols=["part"], ray_remote_args=WRITE_ARGS)
    folder.mkdir()


def present(folder: str) -> set[str]:
    """The parts a partitioned folder holds."""
    f = Folder(folder)
    if not f.exists():
        return set()
    infos = f.fs.get_file_info(pafs.FileSelector(f.path, recursive=False))
    return {i.base_name[len(PREFIX):] for i in infos if i.type == pafs.FileType.Directory
            and i.base_name.startswith(PREFIX)}


def link(source: str, target: str, parts) -> int:
    """Every file of `parts` in `source` also in `target` (after `write`, which clears it); the files linked."""
    src, dst, n = Folder(source), Folder(target), 0
    for part in sorted(parts):
        for f in (src / f"{PREFIX}{part}").files(".parquet"):
            to = dst / f"{PREFIX}{part}" / f.name
            if src.is_local and dst.is_local:
                os.makedirs(os.path.dirname(to.path), exist_ok=True)
                os.link(f.path, to.path)
            else:
                pafs.copy_files(f.path, to.path, source_filesystem=f.fs, destination_filesystem=to.fs)
            n += 1
    return n


def paths(folder: str, parts=None) -> list[str]:
    """The part folders of `parts` (default: every one) that `folder` holds, to read those only."""
    have = present(folder)
    return [str(Folder(folder) / f"{PREFIX}{p}") for p in sorted(have if parts is None else parts) if p in have]

"""Datasets written to the stage folder between passes: a cut in Ray's lineage.

Ray rebuilds a lost block by re-running the tasks that made it, back to the
source. A multi-pass stage (dedup: documents, keys, one hash shuffle per rule,
label propagation rounds) that only materialises its passes in the object store
makes a dead node's blocks a replay of every pass before it; measured on
cluster/local.sh, that replay hung with the surviving CPUs held. A pass that
reads its input from Parquet in the workdir (storage every node sees) needs only
those file reads again, and a re-run of a half-done stage starts at the first
pass without a `_DONE` marker. datatrove and NeMo Curator write each dedup step
to disk for the same reasons.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from .storage import Folder

DONE = "_DONE"
# I/O at a quarter CPU: a whole-CPU writer starves the pass that feeds it, and on nodes of one CPU each a
# whole-CPU read (or its re-run after a node died) finds no node with a CPU free once an actor pool holds
# half of each: measured, a 3-node run hung there
WRITE_ARGS = READ_ARGS = {"num_cpus": 0.25}


class Checkpoints:
    """`keep(name, ds, schema)`: `ds` written once to `folder/name` and read back from there, materialised
    (object-store materialisation only when `folder` is None, for callers without a workdir). `schema` is
    what an empty result reads back as: Ray writes no file for an empty dataset."""

    def __init__(self, folder: Folder | None):
        self.folder = folder

    def __call__(self, name: str, ds: ray.data.Dataset, schema: pa.Schema, materialize: bool = True) -> ray.data.Dataset:
        if self.folder is None:
            return ds.materialize()
        target = self.folder / name
        if not (target / DONE).exists():
            target.remove()
            ds.write_parquet(str(target), ray_remote_args=WRITE_ARGS)
            if not target.files(".parquet"):
                target.mkdir()
                pq.write_table(schema.empty_table(), (target / "empty.parquet").path, filesystem=target.fs)
            (target / DONE).write_text("")
        # read once into the object store: a pass's output is read by several later passes, and a block lost
        # with a node is rebuilt from its file, not from the passes before
        read = ray.data.read_parquet(str(target), **READ_ARGS)
        return read.materialize() if materialize else read

    def done(self, name: str) -> bool:
        return self.folder is not None and (self.folder / name / DONE).exists()

    def remove(self) -> None:
        if self.folder is not None:
            self.folder.remove()

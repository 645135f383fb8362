"""Order by explicit keys: nothing in ragworks relies on the order Ray Data delivers rows in.

Ray Data runs blocks out of order unless `preserve_order` is set, and setting it
for every dataset makes one slow block hold back all that follow it. Where an
order matters ("the first N", "the first copy wins"), it is a key the rows
carry, and these helpers decide by that key wherever the rows happen to be.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray


def first_of_key(t: pa.Table, key: str, order: str | list[str]) -> tuple[pa.Table, np.ndarray]:
    """`t` sorted by (key, order) and, per row, the index of its key group's first row. `t` must hold every
    row of each key it holds: the whole table, or one partition of a hash shuffle on `key`."""
    order = [order] if isinstance(order, str) else order
    t = t.sort_by([(key, "ascending")] + [(c, "ascending") for c in order])
    n = t.num_rows
    starts = np.ones(n, dtype=bool)
    if n > 1:
        k = t[key].combine_chunks()
        same = pc.equal(k.slice(1), k.slice(0, n - 1))  # null keys: each row its own group
        starts[1:] = ~same.fill_null(False).to_numpy(zero_copy_only=False)
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0)) if n else np.zeros(0, dtype=np.int64)
    return t, first


# Up to this many rows, a keyed pass runs on one block in one task: a hash shuffle starts its aggregator
# actors first, 10-15 s on 2 busy cores, whatever the size (the quickstart paid it three times).
ONE_TASK_ROWS = 200_000


def per_key(ds: ray.data.Dataset, key: str, fn, partitions: int | None = None, rows: int | None = None,
            **kwargs) -> ray.data.Dataset:
    """`fn` on hash partitions of `ds` by `key`: each call sees every row of the keys it sees. `rows`, when the
    caller knows it: at most ONE_TASK_ROWS, and `fn` sees every row at once instead (no shuffle); its output is
    split into as many blocks as the shuffle would make, so an actor pool after it still gets one each."""
    partitions = partitions or max(1, int(ray.cluster_resources().get("CPU", 1)))
    one_task = rows is not None and rows <= ONE_TASK_ROWS
    keyed = ds.repartition(1) if one_task else ds.repartition(partitions, keys=[key])
    out = keyed.map_batches(fn, batch_size=None, batch_format="pyarrow", **kwargs)
    return out.repartition(partitions) if one_task else out


def _smallest(t: pa.Table, n: int, by: list[str]) -> pa.Table:
    return t.sort_by([(c, "ascending") for c in by]).slice(0, n)


def first_rows(ds: ray.data.Dataset, n: int, by: list[str], **ray_remote_args) -> ray.data.Dataset:
    """The `n` rows smallest by the columns `by` (nulls last), the same whatever order blocks arrive in:
    each block keeps its own `n` smallest, then one task picks `n` of what is left (at most blocks x n rows:
    `n` is a sample size, never the corpus)."""
    keep = {"fn_kwargs": {"n": n, "by": by}, "batch_size": None, "batch_format": "pyarrow", **ray_remote_args}
    return ds.map_batches(_smallest, **keep).repartition(1).map_batches(_smallest, **keep)

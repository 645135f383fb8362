"""A LanceDB table written in parallel: each Ray Data write task writes Lance fragments, the driver commits once.

Lance's distributed write (`lance.fragment.write_fragments` in the workers, one
`LanceDataset.commit` in the driver) is what Ray's own `Dataset.write_lance` does, but on
ray 2.60 that sink passes `storage_options_provider`, which no pylance installable beside
lancedb 0.40 accepts (ray issue 65129). This sink uses only the public pylance calls, so
no vector ever passes through the driver: it receives fragment metadata, a few hundred
bytes a task, and the table appears whole in one commit (a killed run leaves no table
version, only unreferenced files).
"""

from __future__ import annotations

import pickle
from typing import Iterable

import pyarrow as pa
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor


class LanceFragments(Datasink):
    """`ds.write_datasink(LanceFragments(uri))` writes `uri` (a `NAME.lance` folder that `lancedb.connect` of its
    parent opens as table NAME), replacing what was there; `rows` holds the count after the commit. With
    `append_to` (a table version), the rows are added to that version instead, in one commit that fails if
    another writer committed since (a corpus delta's new chunks)."""

    def __init__(self, uri: str, rows_per_write: int = 65_536, append_to: int | None = None):
        self.uri = uri
        self.rows = 0
        self.rows_per_write = rows_per_write
        self.append_to = append_to

    @property
    def min_rows_per_write(self) -> int:
        """Ray bundles blocks up to this many rows per `write`: one write task and one Lance fragment per small
        embedding block would mean hundreds of tasks and a table of tiny fragments (Lance reads large ones faster)."""
        return self.rows_per_write

    def write(self, blocks: Iterable[Block], ctx) -> bytes | None:
        import lance

        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        if not tables:
            return None
        table = pa.concat_tables(tables)
        fragments = lance.fragment.write_fragments(table, self.uri, schema=table.schema)
        return pickle.dumps((fragments, table.schema, table.num_rows))

    def on_write_complete(self, write_result) -> None:
        import lance

        written = [pickle.loads(r) for r in write_result.write_returns if r is not None]
        if not written:
            return  # nothing to commit: `rows` stays 0 and the caller says why
        schema = written[0][1]
        for _, other, _ in written:
            if not other.equals(schema):
                raise ValueError(f"the blocks disagree on their columns:\n{schema}\nvs\n{other}")
        fragments = [f for frags, _, _ in written for f in frags]
        if self.append_to is None:
            lance.LanceDataset.commit(self.uri, lance.LanceOperation.Overwrite(schema, fragments))
        else:
            lance.LanceDataset.commit(self.uri, lance.LanceOperation.Append(fragments), read_version=self.append_to,
                                      max_retries=0)
        self.rows = sum(n for _, _, n in written)

"""The contract between ray, pylance and lancedb, through exactly the index stage's write path.

These three packages have broken each other more than once (ray issue 65129: Ray's own
`write_lance` against current pylance; lance-ray issues 50 and 71), so the versions
pinned in pyproject.toml are the ones this test passed with: Ray Data tasks write Lance
fragments, the driver commits once, LanceDB opens the table, builds the ANN and full-text
indexes and searches it three ways, and a second write replaces the rows in one version.
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import ray.cloudpickle
from rich.console import Console

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module

DIM = 16
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]


def vectors_for(ids: list[str]) -> np.ndarray:
    """A fixed unit vector per row, from its number: the same row always gets the same vector."""
    from ragworks.index.search import unit

    return unit(np.stack([np.random.default_rng(int(i[1:])).normal(size=DIM) for i in ids]))


def with_vectors(batch: pa.Table) -> pa.Table:
    from ragworks.index.embed import vector_array

    return batch.append_column("vector", vector_array(vectors_for(batch["id"].to_pylist())))


def chunks(n: int, tag: str):
    import ray

    rows = [{"id": f"c{i}", "doc_id": f"d{i}", "chunk_index": 0, "n_tokens": 3, "title": "",
             "text": f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]} {tag}{i}", "source": "x.jsonl", "line": i,
             "metadata": "{}"} for i in range(n)]
    # several blocks, so several tasks write fragments, as the embedder pool does
    return ray.data.from_items(rows).repartition(6).map_batches(with_vectors, batch_format="pyarrow")


def test_parallel_fragment_write_commits_once_and_lancedb_indexes_and_searches_it(ray_local, tmp_path):
    import lance

    from ragworks.index.config import IndexConfig
    from ragworks.index.index import add_indexes, write_table
    from ragworks.index.search import Searcher

    cfg = IndexConfig(ann={"min_rows": 100, "num_partitions": 2})  # the stage's default ANN kind, small
    table = write_table(str(tmp_path), "chunks", chunks(600, "w"), rows_per_write=100)
    assert table.count_rows() == 600
    assert lance.dataset(str(tmp_path / "chunks.lance")).version == 1  # one commit for all the fragments
    assert len(lance.dataset(str(tmp_path / "chunks.lance")).get_fragments()) >= 2  # written by several tasks
    assert add_indexes(table, cfg, Console(quiet=True)) == ["IVF_HNSW_SQ", "FTS"]

    searcher = Searcher(tmp_path, model=object())
    target = vectors_for(["c123"])[0]
    assert searcher.search("", mode="dense", k=3, vector=target)[0]["id"] == "c123"
    assert searcher.search("w77", mode="fulltext", k=3)[0]["id"] == "c77"
    assert searcher.search("w123", mode="hybrid", k=3, vector=target)[0]["id"] == "c123"

    # a forced re-run: the new rows replace the old in one new version; the old rows are gone from it
    before = lance.dataset(str(tmp_path / "chunks.lance")).version  # the indexes are versions too
    table = write_table(str(tmp_path), "chunks", chunks(50, "v"))
    assert table.count_rows() == 50 and lance.dataset(str(tmp_path / "chunks.lance")).version == before + 1
    add_indexes(table, cfg.model_copy(update={"ann": cfg.ann.model_copy(update={"min_rows": 1000})}),
                Console(quiet=True))
    assert Searcher(tmp_path, model=object()).search("v7", mode="fulltext", k=1)[0]["text"].endswith("v7")

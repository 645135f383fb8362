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


def chunks(n: int, tag: str, start: int = 0):
    import ray

    rows = [{"id": f"c{i}", "doc_id": f"d{i}", "chunk_index": 0, "n_tokens": 3, "title": "",
             "text": f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]} {tag}{i}", "source": "x.jsonl", "line": i,
             "metadata": "{}"} for i in range(start, start + n)]
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


def test_delta_rows_join_the_vector_index_as_segments_and_search_as_one_merged_index(ray_local, tmp_path):
    """Each delta's rows become a segment of their own (no rewrite of the trained one); past the limit the delta
    segments merge into one; the hits equal those of a table whose every delta was merged into one index."""
    import shutil

    import lance
    import ray

    from ragworks.index.update import fold_index

    def table(ds) -> pa.Table:
        return pa.concat_tables(ray.get(ds.to_arrow_refs()))

    uri, merged = str(tmp_path / "chunks.lance"), str(tmp_path / "merged.lance")
    lance.write_dataset(table(chunks(600, "w")), uri)
    lance.dataset(uri).create_index("vector", "IVF_FLAT", num_partitions=4, metric="cosine")
    shutil.copytree(uri, merged)
    trained = lance.dataset(uri).describe_indices()[0].segments[0]
    segments = []
    for k in range(4):
        rows = table(chunks(40, "d", start=1000 + 40 * k))
        for target in (uri, merged):
            lance.write_dataset(rows, target, mode="append")
        fold_index(lance.dataset(uri), "vector", max_segments=2)
        lance.dataset(merged).optimize.optimize_indices(num_indices_to_merge=1)  # into the one index
        segments.append(lance.dataset(uri).describe_indices()[0].segments)
    assert [len(s) for s in segments] == [2, 3, 2, 3]
    assert all(s[0].uuid == trained.uuid for s in segments)  # the trained segment was never rewritten
    assert len(lance.dataset(merged).describe_indices()[0].segments) == 1
    for target in (uri, merged):
        assert lance.dataset(target).stats.index_stats("vector_idx")["num_unindexed_rows"] == 0

    def top(target: str, vector) -> list[str]:
        hits = lance.dataset(target).to_table(columns=["id", "_distance"], nearest={
            "column": "vector", "q": vector, "k": 10, "nprobes": 2})
        return hits["id"].to_pylist()

    for i in ("c5", "c1003", "c1100", "c1159"):
        assert top(uri, vectors_for([i])[0]) == top(merged, vectors_for([i])[0]), i

"""Dense, full-text and hybrid search over a ragworks LanceDB table.

Hybrid is LanceDB's own hybrid query and reranker (linear combination of
normalized scores, or reciprocal rank fusion), so serving and evaluation rank
exactly the way the library does.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

# LanceDB's hybrid query selects columns internally and logs a deprecation
# warning per query; the warning is about LanceDB's own call, not ours.
os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("LANCE_LOG", "error")  # lance's Rust logger reads it once, at import: a WARN per scan else

import lancedb  # noqa: E402
import numpy as np  # noqa: E402

from ..manifest import read_manifest  # noqa: E402
from ..sections import Mode  # noqa: E402

COLUMNS = ["id", "doc_id", "chunk_index", "title", "text", "source", "metadata"]
HNSW_PARTITION_ROWS = 1_048_576  # LanceDB's target partition size for IVF_HNSW indexes: one graph per partition


def auto_ef(rows: int) -> int:
    """`ann.ef: auto`: the HNSW candidates a search visits, grown with the graph it walks (Malkov and Yashunin,
    2018: recall at a fixed ef falls as the graph grows). On benchmarks/ann_recall.py's table a fixed 1000 found
    0.9975 of the exact top 10 at 100k rows and 0.9495 at 1M; 1% of the graph's rows, 0.998 and 0.9985. Shorter
    queries over chunks (delta_ingest.py, 472k rows) reached 0.98, and no ef past it reached 0.995: the graph's
    build, not ef, bounds that (docs/benchmarks.md). One graph holds a partition: at most about two of LanceDB's
    target partition sizes."""
    return max(1000, rows // max(1, rows // HNSW_PARTITION_ROWS) // 100)


class Searcher:
    def __init__(self, uri: str | Path, table: str = "chunks", embedder: str = "base", metric: str = "cosine",
                 nprobes: int = 32, ef: int | str | None = None, refine_factor: int | None = None, fusion: str = "linear",
                 vector_weight: float = 0.5, candidates: int = 100, rrf_k: int = 60, model=None,
                 version: int | None = None):
        self.db = lancedb.connect(str(uri))
        self.table = self.db.open_table(table)
        if version is not None and version != self.table.version:  # the manifest's version, not an update's
            self.table.checkout(version)
        self.embedder_name = embedder
        self.metric = metric
        self.nprobes, self.refine_factor = nprobes, refine_factor
        self.ef = auto_ef(self.rows) if ef == "auto" else ef
        self.fusion, self.vector_weight, self.candidates, self.rrf_k = fusion, vector_weight, candidates, rrf_k
        self._model = model

    @cached_property
    def rows(self) -> int:
        """Rows of the version this searcher opened, which stays put: counted once."""
        return self.table.count_rows()

    @property
    def model(self):
        if self._model is None:
            from .embed import load_embedder

            self._model = load_embedder(self.embedder_name)
        return self._model

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)

    def _ann(self, q):
        """A vector query with the index's search settings (what a table without an ANN index ignores)."""
        q = q.distance_type(self.metric).nprobes(self.nprobes)
        if self.ef:
            q = q.ef(self.ef)
        return q.refine_factor(self.refine_factor) if self.refine_factor else q

    def dense(self, vector: np.ndarray, k: int = 10, columns: list[str] = COLUMNS, exact: bool = False) -> list[dict]:
        """`exact`: every row compared (LanceDB's `bypass_vector_index`), the answer the ANN index approximates;
        what its recall is measured against (benchmarks/ann_recall.py, delta_ingest.py)."""
        q = self.table.search(vector, query_type="vector")
        q = q.distance_type(self.metric).bypass_vector_index() if exact else self._ann(q)
        rows = q.select(columns + ["_distance"]).limit(k).to_list()
        for r in rows:
            r["score"] = -r.pop("_distance")
        return rows

    def fulltext(self, text: str, k: int = 10, columns: list[str] = COLUMNS) -> list[dict]:
        rows = self.table.search(text, query_type="fts").select(columns + ["_score"]).limit(k).to_list()
        for r in rows:
            r["score"] = r.pop("_score")
        return rows

    def reranker(self):
        from lancedb.rerankers import LinearCombinationReranker, RRFReranker

        if self.fusion == "rrf":
            return RRFReranker(K=self.rrf_k)
        return LinearCombinationReranker(weight=self.vector_weight)

    def hybrid(self, text: str, vector: np.ndarray, k: int = 10, columns: list[str] = COLUMNS) -> list[dict]:
        # LanceDB fetches `limit` results from each side before fusing: fetch the
        # configured candidates, so a top-4 search fuses the same lists a top-100 does.
        q = self._ann(self.table.search(query_type="hybrid").vector(vector).text(text)).rerank(self.reranker())
        rows = q.select(columns).limit(max(k, self.candidates)).to_list()[:k]
        for r in rows:
            r["score"] = r.pop("_relevance_score")
            r.pop("_distance", None), r.pop("_score", None)
        return rows

    def chunk(self, chunk_id: str, columns: list[str] = COLUMNS) -> dict | None:
        """One chunk by its id (what a citation names), or None."""
        literal = chunk_id.replace("'", "''")
        rows = self.table.search().where(f"id = '{literal}'").select(columns).limit(1).to_list()
        return rows[0] if rows else None

    def search(self, query: str, mode: Mode = "hybrid", k: int = 10, vector: np.ndarray | None = None,
               with_vectors: bool = False, reranker=None) -> list[dict]:
        """The top `k` hits; with a `Reranker`, its `top_k` first-stage hits re-ordered by the cross-encoder."""
        if reranker is not None:
            return reranker.rerank(query, self.search(query, mode, max(k, reranker.top_k), vector, with_vectors), k)
        columns = COLUMNS + ["vector"] if with_vectors else COLUMNS
        if mode == "fulltext":
            return self.fulltext(query, k, columns)
        if vector is None:
            vector = self.embed([query])[0]
        return self.dense(vector, k, columns) if mode == "dense" else self.hybrid(query, vector, k, columns)


def unit(vectors) -> np.ndarray:
    """Rows scaled to length one, so a dot product is a cosine similarity."""
    v = np.asarray(vectors, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


class IndexActor:
    """Base of Ray Data callable classes that search the index: one searcher (and
    embedder) per actor, torch limited to the CPUs Ray assigned it."""

    def __init__(self, index, cfg):
        from ..runtime import limit_torch_threads

        limit_torch_threads()
        self.searcher = open_index(index)
        self.cfg = cfg


def open_index(index, **overrides) -> Searcher:
    """The searcher for an index stage's outputs (`IndexOutputs`, what a stage gets from `ctx.output`), or for
    a finished index folder's, configured from them alone."""
    from . import IndexOutputs

    if isinstance(index, IndexOutputs):
        out = index
    else:
        manifest = read_manifest(index)
        if manifest is None:
            raise FileNotFoundError(f"{index}: no finished index (no manifest.json); run the index stage first")
        out = IndexOutputs.from_manifest(manifest)
    kwargs = dict(table=out.table, embedder=out.embedder, metric=out.metric, nprobes=out.nprobes, ef=out.ef,
                  refine_factor=out.refine_factor, version=out.version, **out.hybrid)
    kwargs.update(overrides)
    return Searcher(out.lancedb, **kwargs)

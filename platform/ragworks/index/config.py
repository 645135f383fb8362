"""The index stages' section of a job spec: the embedder, the LanceDB indexes and how a search uses them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from ..sections import RESOURCES_HELP, Section


class AnnConfig(Section):
    min_rows: int = Field(50_000, ge=0, description="build an ANN index once the table has this many rows; below it, search is exact")
    index_type: Literal["IVF_PQ", "IVF_FLAT", "IVF_SQ", "IVF_HNSW_SQ", "IVF_HNSW_PQ"] = "IVF_HNSW_SQ"
    num_partitions: int | None = None
    nprobes: int = Field(32, ge=1)
    ef: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto", description="HNSW candidates a search visits. auto: 1% of the rows one HNSW graph holds, at least "
        "1000: a fixed 1000 found 0.9975 of the exact top 10 at 100k rows and 0.9495 at 1M, auto 0.9985 at 1M "
        "(benchmarks/ann_recall.py); auto assumes LanceDB's partition sizes: with num_partitions set, set ef; "
        "LanceDB's default, 1.5 x limit, under half at 100k; None: LanceDB's")
    refine_factor: int | None = Field(10, ge=1, description="re-rank limit x this many candidates by their full "
                                      "vectors: SQ's 8-bit codes alone capped recall@10 at 0.87; None: codes only")


class FulltextConfig(Section):
    enabled: bool = True
    language: str = "English"
    stem: bool = True
    remove_stop_words: bool = True
    rebuild_fraction: float = Field(0.05, ge=0.0, description="on a corpus update, rebuild the full-text index once the "
                                    "rows deleted since it was built pass this share of the table; until then new rows "
                                    "are folded in and deleted ones only hidden, and BM25 still counts them (top-10 "
                                    "overlap with a rebuild: 0.998 at 1% deleted, 0.995 at 5%); 0 rebuilds on every delete")


class HybridConfig(Section):
    fusion: Literal["linear", "rrf"] = Field(
        "linear", description="linear: LanceDB's LinearCombinationReranker over min-max normalized scores; rrf: "
                              "reciprocal rank fusion. On SciFact linear fusion ranks better (benchmarks/hybrid_fusion.py)")
    vector_weight: float = Field(0.5, ge=0.0, le=1.0, description="linear: the dense side's share of the fused score")
    candidates: int = Field(100, ge=1, description="results each side brings to the fusion (at least k); min-max "
                                                   "normalization over a handful of results is noisy")
    rrf_k: int = Field(60, ge=1, description="rrf: the rank offset")


class RerankConfig(Section):
    """A cross-encoder re-scoring each query's top hits (monoBERT: Nogueira and Cho, 2019)."""

    model: str = Field(..., description="'reranker' (the job's train_reranker model), a Hugging Face cross-encoder "
                       "id or a path")
    top_k: int = Field(20, ge=1, description="hits re-scored per query; the ones after keep their order below them")
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(256, ge=16, description="tokens of query and passage together")


class IndexUpdateConfig(Section):
    """How an index follows a corpus delta in place (ragworks/index/update.py has the whole policy)."""

    retrain_fraction: float = Field(0.25, gt=0, description="retrain the vector index once the rows added since it "
                                    "was trained pass this share of the rows it was trained on (its centroids drift)")
    max_index_segments: int = Field(8, ge=1, description="each delta's rows join the vector and full-text "
                                    "indexes as a segment of their own; past this many such segments they are merged "
                                    "into one (the first, built segment is never rewritten)")
    max_small_fragments: int = Field(16, ge=1, description="compact the small fragments deltas write once there are "
                                     "more than this many")


class IndexConfig(Section):
    embedder: str = Field("base", description="'base' (bundled all-MiniLM-L6-v2), 'static' (a static model distilled "
                                               "from it: far faster on CPU, less accurate), 'trained' (base first, then "
                                               "re-indexed with train_retriever's model), 'bundled:NAME', a Hugging Face id or a path")
    table: str = "chunks"
    batch_size: int = Field(64, ge=1)
    concurrency: tuple[int, int] = Field((1, 2), description="embedder actor pool: (min, max)")
    # Half a CPU by default: Ray Data's resource allocator reserves half the CPUs evenly across a dataset's
    # operators, which on 2 CPUs leaves the embedding pool about 1.2 of them, so a second 1-CPU actor never
    # started (measured on 1,500 SciFact abstracts: 165 s with one actor, 108 s with two at 0.5 each).
    num_cpus: float = Field(0.5, gt=0, description="CPUs each embedder actor asks Ray for; torch gets as many "
                                                   "threads, at least one")
    num_gpus: float = Field(0.0, ge=0)
    resources: dict[str, float] = Field(default_factory=dict, description=RESOURCES_HELP)
    metric: Literal["cosine", "dot", "l2"] = "cosine"
    ann: AnnConfig = Field(default_factory=AnnConfig)
    fulltext: FulltextConfig = Field(default_factory=FulltextConfig)
    update: IndexUpdateConfig = Field(default_factory=IndexUpdateConfig)
    hybrid: HybridConfig = Field(default_factory=HybridConfig, description="how hybrid search fuses dense and full-text "
                                 "results, for every stage and the server that search this index")

    @field_validator("fulltext", mode="before")
    @classmethod
    def _fulltext_bool(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else v


def check(spec, spec_dir) -> list[str]:
    if spec.index.embedder == "trained" and getattr(spec, "train_retriever", None) is None:
        return ["index.embedder 'trained' needs a train_retriever section (or a finished one: name its model "
                "folder instead)"]
    return []


def implied_index_tuned(data: dict) -> dict:
    """`index.embedder: trained`: index with the base model (training mines it), then re-index with the tuned
    one in an `index_tuned` stage with the same settings."""
    if isinstance(data.get("index"), dict) and data.get("train_retriever") is not None \
            and data["index"].get("embedder") == "trained" and data.get("index_tuned") is None:
        return {**data, "index_tuned": dict(data["index"])}
    return data


def check_tuned(spec, spec_dir) -> list[str]:
    if spec.index_tuned.embedder not in ("trained", "base"):
        return ["index_tuned.embedder: index_tuned embeds with train_retriever's model; leave it out"]
    return []

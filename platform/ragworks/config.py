"""The job spec: one pydantic section per stage.

Every field has a default that runs on one laptop, so a spec names only what
differs. Unknown keys are errors (a typo must not silently fall back to a
default), and every error names the field it is about.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .models import DEFAULT_EMBEDDER, STATIC, STATIC_EMBEDDER
from .sections import RESOURCES_HELP, Mode, RayConfig, Section  # noqa: F401 - RayConfig: the spec's ray section
from .storage import Folder, is_uri


class SpecError(ValueError):
    """A job spec that cannot run; the message names the file and the field."""


# ----------------------------------------------------------------- corpus
class SourceConfig(Section):
    format: Literal["beir", "jsonl", "parquet", "files"] = "beir"
    path: str = Field(..., description="BEIR folder, .jsonl/.parquet file or folder, or a folder of .txt/.md/.html files")
    id_field: str = "_id"
    title_field: str | None = "title"
    text_field: str = "text"
    extensions: list[str] = Field(default_factory=lambda: [".txt", ".md", ".html", ".htm"])
    limit: int | None = Field(None, ge=1, description="read only the first N records (a sample)")


class NormalizeConfig(Section):
    unicode: Literal["NFC", "NFKC", "none"] = "NFKC"
    html: Literal["auto", "always", "never"] = Field("auto", description="auto: strip HTML from .html/.htm files")
    whitespace: bool = True


class NearDedupConfig(Section):
    enabled: bool = False
    threshold: float = Field(0.9, gt=0.0, le=1.0, description="estimated Jaccard similarity of word shingles")
    num_perm: int = Field(128, ge=16)
    shingle_words: int = Field(5, ge=1)
    bands: int | None = Field(None, ge=1, description="LSH bands; null: derived from the threshold (see rows)")
    rows: int | None = Field(None, ge=1, description="MinHash values per band; null: derived from the threshold, "
                             "the most rows that still make a pair at the threshold a candidate 99.5% of the time")
    verify: bool = Field(True, description="keep a candidate pair only if its signatures agree on at least "
                         "`threshold` of the permutations (LSH alone also pairs documents well below it)")

    @model_validator(mode="after")
    def _bands_fit(self) -> "NearDedupConfig":
        if self.bands and self.rows and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows ({self.bands} x {self.rows}) is more than num_perm ({self.num_perm})")
        return self


class DedupConfig(Section):
    exact: bool = True
    near: NearDedupConfig = Field(default_factory=NearDedupConfig)
    max_rows_in_one_task: int = Field(200_000, ge=0, description="up to this many documents (or candidate pairs) "
                                      "are deduplicated in one task; above it, in hash-partitioned passes that no "
                                      "process holds whole (0: always partitioned)")
    partitions: int | None = Field(None, ge=1, description="hash partitions of the partitioned passes; null: "
                                   "one per 100,000 documents, at least the cluster's CPUs")


class ChunkingConfig(Section):
    max_tokens: int | None = Field(256, ge=16, description="null: one chunk per document")
    overlap: int = Field(32, ge=0)
    tokenizer: str = Field("embedder", description="'embedder' (the index stage's model) or a model id/path")
    title: bool = Field(True, description="prepend the title to every chunk so each chunk stands alone")
    _embedder: str | None = PrivateAttr(None)  # the index's embedder, set when the spec is loaded

    @property
    def tokenizer_model(self) -> str:
        """The tokenizer chunks are measured with: 'embedder' is resolved when the spec is loaded, so the
        corpus stage never reads the index section."""
        if self.tokenizer != "embedder":
            return self.tokenizer
        embedder = self._embedder or "base"
        if embedder == STATIC_EMBEDDER:  # no length limit of its own; its vocabulary is its teacher's
            embedder = STATIC.source
        return DEFAULT_EMBEDDER if embedder in ("base", "trained") else embedder

    @model_validator(mode="after")
    def _overlap_fits(self) -> "ChunkingConfig":
        if self.max_tokens is not None and self.overlap >= self.max_tokens:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than max_tokens ({self.max_tokens})")
        return self


class CorpusConfig(Section):
    source: SourceConfig
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    concurrency: tuple[int, int] = Field((1, 2), description="chunker actor pool: (min, max)")
    resources: dict[str, float] = Field(default_factory=dict, description=RESOURCES_HELP)


# ------------------------------------------------------------------ index
class AnnConfig(Section):
    min_rows: int = Field(50_000, ge=0, description="build an ANN index once the table has this many rows; below it, search is exact")
    index_type: Literal["IVF_PQ", "IVF_FLAT", "IVF_SQ", "IVF_HNSW_SQ", "IVF_HNSW_PQ"] = "IVF_HNSW_SQ"
    num_partitions: int | None = None
    nprobes: int = Field(32, ge=1)
    ef: int | None = Field(1000, ge=1, description="HNSW candidates a search visits (LanceDB's default, 1.5 x limit, "
                           "found 0.46 of the exact top 10 on a 100k-row IVF_HNSW_SQ table; 1000 with refine_factor "
                           "10: 0.995, 11 ms a query against 7; benchmarks/delta_ingest.py); None: LanceDB's")
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


# ------------------------------------------------------------- synthesize
from .engines.config import EngineConfig, TransformersEngineConfig  # noqa: E402 - the synthesize sections' engine


class PromptConfig(Section):
    examples: str | None = Field(None, description="YAML file with 'examples: [{document, query}]' (at most 8 are used)")
    instruction: str | None = Field(None, description="first line of the prompt (default: the examples file's, else generic)")
    max_examples: int = Field(8, ge=0, le=8)
    max_doc_words: int = Field(160, ge=8, description="documents are cut to this many words in the prompt")
    document: Literal["text", "title", "title_text"] = Field(
        "text", description="what the prompt shows of a chunk: its text, its document's title, or both; "
                            "a small model grounds better on a short informative title than on a long text")


class RagExamplesConfig(Section):
    distractors: int = Field(3, ge=0, description="distractor chunks taken from the index per example")
    no_oracle_fraction: float = Field(0.2, ge=0.0, le=1.0, description="share of examples without the oracle chunk")
    mode: Mode = "hybrid"
    claims: int = Field(
        0, ge=0, description="also make up to N examples from the claims the filters stage kept: the claim is the "
                             "question, the cited answer its passage's closest sentence (no generation); a model "
                             "served claims, like SciFact's, learns to cite for them (rag_examples section only)")


class SynthesizeConfig(Section):
    task: Literal["queries", "rag_examples"] = "queries"
    per_chunk: int = Field(1, ge=1, description="generations per chunk (use temperature > 0 for more than one)")
    limit: int | None = Field(None, ge=1, description="only the first N chunks")
    engine: EngineConfig = Field(default_factory=TransformersEngineConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    rag: RagExamplesConfig = Field(default_factory=RagExamplesConfig)


class RagExamplesStageConfig(SynthesizeConfig):
    """The `rag_examples` section: synthesize's RAFT task as a stage of its own, so one job makes both."""

    task: Literal["rag_examples"] = "rag_examples"


class LengthFilter(Section):
    min_words: int = Field(3, ge=0)
    max_words: int = Field(40, ge=1)


class ConsistencyFilter(Section):
    enabled: bool = True
    top_k: int = Field(20, ge=1, description="the query must find its own chunk within this many hits")
    mode: Mode = "dense"


class FiltersConfig(Section):
    cleanup: bool = Field(True, description="strip 'Query:' prefixes, quotes, numbering and stray lines")
    length: LengthFilter = Field(default_factory=LengthFilter)
    dedup: bool = Field(True, description="drop repeats of an identical (case-folded) query")
    consistency: ConsistencyFilter = Field(default_factory=ConsistencyFilter)
    min_score: float | None = Field(None, description="drop queries whose cosine similarity to their own chunk is lower")
    batch_size: int = Field(64, ge=1)
    concurrency: tuple[int, int] = Field((1, 2), description="retrieval actor pool: (min, max)")
    resources: dict[str, float] = Field(default_factory=dict, description=RESOURCES_HELP)

    @field_validator("consistency", mode="before")
    @classmethod
    def _consistency_shorthand(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else v


class NegativesConfig(Section):
    per_query: int = Field(4, ge=1)
    skip_top: int = Field(3, ge=0, description="ignore this many top-ranked candidates (likely unlabelled positives)")
    max_score_ratio: float = Field(0.95, gt=0.0, le=1.0, description="drop candidates scoring above this fraction of the positive's score")
    candidates: int = Field(30, ge=1, description="hits fetched per query")
    mode: Mode = "hybrid"
    batch_size: int = Field(64, ge=1)
    concurrency: tuple[int, int] = Field((1, 2))
    resources: dict[str, float] = Field(default_factory=dict, description=RESOURCES_HELP)


# -------------------------------------------------------- train_retriever
class LoraConfig(Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="default: the attention projections peft knows for the model")


class DevSetConfig(Section):
    dataset: str = Field(..., description="BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv) read by the rank-0 worker")
    split: str = "dev"
    max_queries: int = Field(200, ge=1, description="judged queries scored at each checkpoint (the first N by id)")
    max_corpus: int = Field(5000, ge=1, description="documents ranked: every judged one plus a fixed sample of the rest")


class TrainerConfig(Section):
    """What every Ray Train stage shares: steps, optimizer, workers, checkpoints, held-out slice."""

    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (default: every epoch)")
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    workers: int = Field(1, ge=1, description="Ray Train workers (one process each; gloo on CPU, nccl on GPU)")
    use_gpu: bool = False
    cpus_per_worker: float | None = Field(None, gt=0, description="default: the cluster's CPUs / workers, less a "
                                                                     "share for the data tasks that feed them, at most one node's CPUs")
    resources: dict[str, float] = Field(default_factory=dict, description=RESOURCES_HELP)
    checkpoint_every: int | None = Field(None, ge=1, description="steps between checkpoints (default: every epoch)")
    max_failures: int = Field(2, ge=0, description="worker failures to survive, resuming from the last checkpoint")
    seed: int = 0
    retrain_after: float = Field(0.1, ge=0.0, le=1.0, description="on a corpus update, train again only once the "
                                 "documents changed since the last training reach this share of the corpus; below "
                                 "it the last model is kept (and the ship gate decides again). 0: always train")


class TrainRetrieverConfig(TrainerConfig):
    model: str = Field("base", description="start from: 'base' (the bundled embedder), 'bundled:NAME', a Hugging Face id or a path")
    batch_size: int = Field(32, ge=2, description="pairs per step over all workers; each query's in-batch negatives are the other pairs")
    learning_rate: float = Field(1e-5, gt=0.0, description="small: a high rate washes out what the base model knows")
    negatives: int = Field(1, ge=0, description="hard negatives per query from the negatives stage (0: in-batch only)")
    scale: float = Field(20.0, gt=0.0, description="similarity scale of the ranking loss (1 / temperature)")
    max_seq_length: int = Field(256, ge=8, description="tokens per text; longer texts are cut")
    matryoshka_dims: list[int] | None = Field(None, description="also train these truncated embedding sizes (Matryoshka)")
    lora: LoraConfig | None = Field(None, description="train LoRA adapters instead of every weight (large embedders)")
    validation_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="pairs held out for model selection, by chunk")
    validation_max: int = Field(500, ge=1)
    dev: DevSetConfig | None = Field(None, description="also score every checkpoint on a labelled BEIR dev set")
    select_on: Literal["heldout", "dev"] = Field("heldout", description="which score picks the exported checkpoint")
    teacher: str | None = Field(None, description="a cross-encoder scoring each (query, positive, negative): 'reranker' "
                                "(the job's train_reranker model), a Hugging Face id or a path; trains on its score "
                                "margins (GPL, MarginMSE)")
    loss: Literal["contrastive", "margin_mse", "both"] | None = Field(None, description="contrastive: multiple-negatives "
                                                                     "ranking; margin_mse: the teacher's margins; both: "
                                                                     "their sum (default: margin_mse with a teacher)")
    teacher_batch_size: int = Field(32, ge=1, description="pairs per teacher call in the scoring actor pool")
    teacher_concurrency: tuple[int, int] = Field((1, 2), description="teacher scoring actor pool: (min, max)")

    @model_validator(mode="after")
    def _dev_named(self):
        if self.select_on == "dev" and self.dev is None:
            raise ValueError("select_on: dev needs a dev set (train_retriever.dev.dataset)")
        if self.loss in ("margin_mse", "both") and self.teacher is None:
            raise ValueError(f"loss: {self.loss} needs a teacher (train_retriever.teacher: 'reranker', a "
                             "cross-encoder id or a path)")
        if self.teacher is not None and self.negatives < 1:
            raise ValueError("teacher: the margins need hard negatives (train_retriever.negatives >= 1)")
        return self

    @property
    def losses(self) -> tuple[str, ...]:
        """The losses summed at each step."""
        loss = self.loss or ("margin_mse" if self.teacher else "contrastive")
        return ("contrastive", "margin_mse") if loss == "both" else (loss,)


# -------------------------------------------------------- train_reranker
class TrainRerankerConfig(TrainerConfig):
    model: str = Field("base", description="start from: 'base' (the bundled embedder's weights with a new scoring "
                       "head), a cross-encoder or any Hugging Face encoder id, or a path")
    batch_size: int = Field(16, ge=1, description="(query, positive) pairs per step over all workers; each brings "
                            "its hard negatives")
    learning_rate: float = Field(2e-5, gt=0.0)
    negatives: int = Field(1, ge=1, description="hard negatives per query from the negatives stage, labelled 0")
    max_length: int = Field(256, ge=16, description="tokens of query and passage together; longer pairs are cut")
    validation_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="pairs held out for model selection, by chunk")
    validation_max: int = Field(300, ge=1)


# -------------------------------------------------------- train_generator
class TrainGeneratorConfig(TrainerConfig):
    model: str = Field("bundled:smollm2-135m-instruct", description="causal LM: 'bundled:NAME', a Hugging Face id or a path")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="the adapter trained (PEFT LoRA)")
    batch_size: int = Field(8, ge=1, description="examples per step over all workers")
    learning_rate: float = Field(2e-4, gt=0.0, description="LoRA trains few weights: rates of 1e-4..5e-4 are usual")
    weight_decay: float = Field(0.0, ge=0.0)
    max_seq_length: int = Field(768, ge=32, description="tokens per example; the prompt is cut from the left to fit")
    max_context_words: int = Field(120, ge=8, description="each context chunk is cut to this many words in the prompt")
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="examples held out (by oracle chunk) for "
                                       "model selection and for the evaluate stage's answer metrics")
    validation_max: int = Field(100, ge=1)
    merged: bool = Field(False, description="also export the base model with the adapter merged in (`merged/`)")


# --------------------------------------------------------------- evaluate

class GenerationEvalConfig(Section):
    max_examples: int = Field(100, ge=1, description="held-out RAG examples answered by the base and the tuned generator")
    max_tokens: int = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)
    concurrency: tuple[int, int] = Field((1, 2), description="generator actor pool: (min, max)")
    num_cpus: float = Field(1.0, gt=0)


class GateConfig(Section):
    """Which index `ragworks serve` serves: the tuned one only when it beats the base one where it counts."""

    modes: list[Mode] = Field(default_factory=lambda: ["hybrid"], description="the modes the server uses: tuned must "
                              "not lose in any of them")
    serve: Literal["auto", "base", "tuned"] = Field("auto", description="auto: the winner; base or tuned: forced")
    min_gain: float = Field(0.0, ge=0.0, description="nDCG@10 tuned must gain over base in every mode to be served")
    dev: DevSetConfig | None = Field(None, description="a labelled BEIR dev set: decides when named (else the held-out "
                                     "synthetic queries decide)")
    candidates: int = Field(100, ge=10, description="chunks fetched per query")
    max_queries: int = Field(500, ge=1, description="held-out synthetic queries scored (drawn by a hash)")


class EvaluateConfig(Section):
    dataset: str | None = Field(None, description="BEIR folder with queries.jsonl and qrels/SPLIT.tsv (default: the corpus source)")
    split: str = "test"
    modes: list[Mode] = Field(default_factory=lambda: ["fulltext", "dense", "hybrid"])
    candidates: int = Field(200, ge=10, description="chunks fetched per query before they are grouped into documents")
    batch_size: int = Field(64, ge=1)
    generation: GenerationEvalConfig = Field(default_factory=GenerationEvalConfig,
                                             description="answer metrics, when the job trains a generator")
    rerank: RerankConfig | None = Field(None, description="also score modes with a cross-encoder re-ranking their "
                                        "top hits ('reranker': the job's train_reranker model)")
    rerank_modes: list[Mode] = Field(default_factory=lambda: ["hybrid"], description="the modes scored again with the "
                                     "reranker (each costs top_k cross-encoder passes per query and index)")


# -------------------------------------------------------------------- job
class JobSpec(Section):
    """One optional section per registered stage (`ragworks.stage.registry()`; a test checks both ways)."""

    name: str = "job"
    workdir: str | None = Field(None, description="default: runs/NAME; a local or shared-mount path, s3:// or gs://")
    ray: RayConfig = Field(default_factory=RayConfig)
    corpus: CorpusConfig | None = None
    index: IndexConfig | None = None
    synthesize: SynthesizeConfig | None = None
    filters: FiltersConfig | None = None
    negatives: NegativesConfig | None = None
    train_retriever: TrainRetrieverConfig | None = None
    index_tuned: IndexConfig | None = Field(None, description="the corpus re-embedded with train_retriever's model "
                                            "(`index.embedder: trained` sets it to the index section)")
    gate: GateConfig | None = Field(None, description="base vs tuned index in the served modes; the winner is served "
                                    "(on whenever index_tuned is; `gate: null` turns it off)")
    train_reranker: TrainRerankerConfig | None = None
    rag_examples: RagExamplesStageConfig | None = None
    train_generator: TrainGeneratorConfig | None = None
    evaluate: EvaluateConfig | None = None

    def workdir_location(self, override: str | Path | None = None) -> str:
        """The workdir as a URI or an absolute path, checked without touching the storage."""
        return workdir_location(override or self.workdir or f"runs/{self.name}")

    def resolved_workdir(self, override: str | Path | None = None) -> Folder:
        location = self.workdir_location(override)
        try:
            return Folder(location)
        except OSError as err:  # a bucket pyarrow cannot reach, or no credentials for it
            raise SpecError(f"workdir {location}: {err}") from None

    @model_validator(mode="before")
    @classmethod
    def _trained_means_index_tuned(cls, data: Any) -> Any:
        """`index.embedder: trained`: index with the base model (training mines it), then re-index with the
        tuned one in an `index_tuned` stage with the same settings."""
        if isinstance(data, dict) and isinstance(data.get("index"), dict) and data.get("train_retriever") is not None \
                and data["index"].get("embedder") == "trained" and data.get("index_tuned") is None:
            data = {**data, "index_tuned": dict(data["index"])}
        if isinstance(data, dict) and data.get("index_tuned") is not None and "gate" not in data:
            data = {**data, "gate": {}}  # never serve a regression it could have measured
        return data

    @model_validator(mode="after")
    def _resolve_across_sections(self) -> "JobSpec":
        if self.index is not None and self.index.embedder == "trained" and self.train_retriever is None:
            raise ValueError("index.embedder 'trained' needs a train_retriever section (or a finished one: "
                             "name its model folder instead)")
        if self.index_tuned is not None and self.index_tuned.embedder not in ("trained", "base"):
            raise ValueError("index_tuned.embedder: index_tuned embeds with train_retriever's model; leave it out")
        if self.train_retriever is not None and self.train_retriever.teacher == "reranker" and self.train_reranker is None:
            raise ValueError("train_retriever.teacher 'reranker' is the job's train_reranker model: add a "
                             "train_reranker section, or name a cross-encoder")
        if self.evaluate is not None and self.evaluate.rerank is not None and self.evaluate.rerank.model == "reranker" \
                and self.train_reranker is None:
            raise ValueError("evaluate.rerank.model 'reranker' is the job's train_reranker model: add a "
                             "train_reranker section, or name a cross-encoder")
        if self.corpus is not None and self.index is not None:
            self.corpus.chunking._embedder = self.index.embedder
        return self


def workdir_location(value: str | Path) -> str:
    """A local folder for one node; for many, a shared mount or an object store every node reaches."""
    value = str(value)
    if is_uri(value):
        return value.rstrip("/")
    if "://" in value and not value.startswith("file://"):
        raise SpecError(f"workdir {value}: unsupported scheme; use a local or shared-mount path, file://, "
                        "s3:// or gs://")
    return str(Path(value.removeprefix("file://")).expanduser().resolve())


# ---------------------------------------------------------------- loading
def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _suggest(model: type[BaseModel], loc: tuple) -> str:
    """For an unknown key, the closest known key of the section it sits in (for a union of sections, such as
    the engines', the keys any of them knows)."""
    classes: list = [model]
    for part in loc[:-1]:
        field = next((c.model_fields[part] for c in classes if part in getattr(c, "model_fields", {})), None)
        if field is None:
            return ""
        ann = field.annotation
        classes = [c for a in getattr(ann, "__args__", (ann,)) for c in getattr(a, "__args__", (a,))
                   if isinstance(c, type) and issubclass(c, BaseModel)]
        if not classes:
            return ""
    known = list(dict.fromkeys(k for c in classes for k in c.model_fields))
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    lines = [f"{source}: invalid job spec"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _suggest(model or JobSpec, loc)
        elif "input" in e and e["type"] not in ("missing",):
            msg += f" (got {e['input']!r})"
        lines.append(f"  {_loc(loc)}: {msg}")
    return "\n".join(lines)


def _resolve_path(value: str, spec_dir: Path) -> Path | None:
    """Relative paths are read from the current directory, then from the spec's folder."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    for base in (Path.cwd(), spec_dir):
        if (base / p).exists():
            return (base / p).resolve()
    return None


# The input paths a spec may name: check_paths resolves each; `ragworks submit` re-points them for the cluster.
PATH_FIELDS = ("corpus.source.path", "evaluate.dataset", "synthesize.prompt.examples", "rag_examples.prompt.examples")


def check_paths(spec: JobSpec, spec_dir: Path, source: str) -> JobSpec:
    """Every input file must exist before any work starts; paths become absolute."""
    problems = []
    if spec.corpus is not None:
        found = _resolve_path(spec.corpus.source.path, spec_dir)
        if found is None:
            problems.append(f"  corpus.source.path: no such file or folder: {spec.corpus.source.path}")
        else:
            spec.corpus.source.path = str(found)
            if spec.corpus.source.format == "beir" and found.is_dir() and not (found / "corpus.jsonl").exists():
                problems.append(f"  corpus.source.path: BEIR folder has no corpus.jsonl: {found}")
    if spec.evaluate is not None:
        if spec.evaluate.dataset is None:
            if spec.corpus is not None and spec.corpus.source.format == "beir":
                spec.evaluate.dataset = spec.corpus.source.path
            else:
                problems.append("  evaluate.dataset: required unless corpus.source is a BEIR folder")
        if spec.evaluate.dataset is not None:
            found = _resolve_path(spec.evaluate.dataset, spec_dir)
            if found is None:
                problems.append(f"  evaluate.dataset: no such folder: {spec.evaluate.dataset}")
            else:
                spec.evaluate.dataset = str(found)
                for need in ("queries.jsonl", f"qrels/{spec.evaluate.split}.tsv"):
                    if not (found / need).exists():
                        problems.append(f"  evaluate.dataset: {found} has no {need} (evaluate.split={spec.evaluate.split!r})")
    for section in ("train_retriever", "gate"):
        dev = getattr(getattr(spec, section), "dev", None)
        if dev is not None:
            found = _resolve_path(dev.dataset, spec_dir)
            if found is None:
                problems.append(f"  {section}.dev.dataset: no such folder: {dev.dataset}")
            else:
                dev.dataset = str(found)
    for section in ("synthesize", "rag_examples"):
        synth = getattr(spec, section)
        if synth is not None and synth.prompt.examples is not None:
            found = _resolve_path(synth.prompt.examples, spec_dir)
            if found is None:
                problems.append(f"  {section}.prompt.examples: no such file: {synth.prompt.examples}")
            else:
                synth.prompt.examples = str(found)
    if spec.synthesize is not None and spec.synthesize.rag.claims:
        problems.append("  synthesize.rag.claims: claim examples are read from the filters stage, which reads "
                        "synthesize; set them in the rag_examples section")
    if spec.rag_examples is not None and spec.rag_examples.rag.claims and spec.filters is None:
        problems.append("  rag_examples.rag.claims: needs a filters section (its kept claims are the questions)")
    from .stage import registry

    for name, stage in registry().items():
        if getattr(spec, name, None) is not None:
            for need in stage.needs:
                if getattr(spec, need, None) is None:
                    problems.append(f"  {name}: needs {'an' if need[0] in 'aeiou' else 'a'} {need} section "
                                    f"(it reads the {need} stage's output)")
    if problems:
        raise SpecError("\n".join([f"{source}: invalid job spec", *problems]))
    return spec


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> dict[str, Any]:
    """`section.field=value` pairs (values read as YAML) set on a copy of the spec, torchtune-style."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"{source}: override {item!r} is not KEY=VALUE (e.g. synthesize.limit=16)")
        *parents, leaf = key.strip().split(".")
        node = data
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"{source}: override {key}: {'.'.join(parents[:i + 1])} is not a section")
            node = child
        try:
            node[leaf] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise SpecError(f"{source}: override {key}: value is not valid YAML: {err}") from None
    return data


def parse_spec(data: dict[str, Any], source: str = "<spec>", spec_dir: Path | None = None,
               overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job spec is a mapping of sections, got {type(data).__name__}")
    if overrides:
        data = apply_overrides(data, overrides, source)
    from .stage import spec_model

    model = spec_model()
    try:
        spec = model.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source, model)) from None
    return check_paths(spec, spec_dir or Path.cwd(), source)


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such job spec")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    return parse_spec(data, str(path), path.parent, overrides)

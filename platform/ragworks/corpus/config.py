"""The corpus stage's section of a job spec: where the records are, how they are cleaned, deduplicated and
chunked."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from ..models import DEFAULT_EMBEDDER, STATIC, STATIC_EMBEDDER
from ..sections import RESOURCES_HELP, Section, resolve_input


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


def check(spec, spec_dir: Path) -> list[str]:
    """The source must exist before any work starts; chunks are measured in the index's embedder's tokens."""
    corpus = spec.corpus
    if getattr(spec, "index", None) is not None:
        corpus.chunking._embedder = spec.index.embedder
    found = resolve_input(corpus.source, "path", spec_dir)
    if found is None:
        return [f"corpus.source.path: no such file or folder: {corpus.source.path}"]
    if corpus.source.format == "beir" and found.is_dir() and not (found / "corpus.jsonl").exists():
        return [f"corpus.source.path: BEIR folder has no corpus.jsonl: {found}"]
    return []

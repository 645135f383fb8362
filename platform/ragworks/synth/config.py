"""The synthetic-data stages' sections of a job spec: generation (queries, RAG examples), filters, negatives."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ..engines.config import EngineConfig, TransformersEngineConfig
from ..sections import RESOURCES_HELP, Mode, Section, resolve_input


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


def _examples(name: str, section: SynthesizeConfig, spec_dir: Path) -> list[str]:
    if section.prompt.examples is not None and resolve_input(section.prompt, "examples", spec_dir) is None:
        return [f"{name}.prompt.examples: no such file: {section.prompt.examples}"]
    return []


def check_synthesize(spec, spec_dir: Path) -> list[str]:
    problems = _examples("synthesize", spec.synthesize, spec_dir)
    if spec.synthesize.rag.claims:
        problems.append("synthesize.rag.claims: claim examples are read from the filters stage, which reads "
                        "synthesize; set them in the rag_examples section")
    return problems


def check_rag_examples(spec, spec_dir: Path) -> list[str]:
    problems = _examples("rag_examples", spec.rag_examples, spec_dir)
    if spec.rag_examples.rag.claims and getattr(spec, "filters", None) is None:
        problems.append("rag_examples.rag.claims: needs a filters section (its kept claims are the questions)")
    return problems

"""The evaluation stages' sections of a job spec: the ship gate and the evaluation on a labelled set."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ..index.config import RerankConfig
from ..sections import Mode, Section, resolve_input
from ..train.config import DevSetConfig, dev_set


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


def implied_gate(data: dict) -> dict:
    """A job that tunes the index gets a ship gate unless it says `gate: null`: never serve a regression it
    could have measured."""
    return {**data, "gate": {}} if data.get("index_tuned") is not None and "gate" not in data else data


def check_gate(spec, spec_dir: Path) -> list[str]:
    return dev_set("gate", spec.gate.dev, spec_dir)


def check_evaluate(spec, spec_dir: Path) -> list[str]:
    """The labelled set: named, or the corpus when it is a BEIR folder; its queries and qrels must exist."""
    cfg, problems = spec.evaluate, []
    if cfg.rerank is not None and cfg.rerank.model == "reranker" and getattr(spec, "train_reranker", None) is None:
        problems.append("evaluate.rerank.model 'reranker' is the job's train_reranker model: add a "
                        "train_reranker section, or name a cross-encoder")
    corpus = getattr(spec, "corpus", None)
    if cfg.dataset is None:
        if corpus is None or corpus.source.format != "beir":
            return problems + ["evaluate.dataset: required unless corpus.source is a BEIR folder"]
        cfg.dataset = corpus.source.path
    found = resolve_input(cfg, "dataset", spec_dir)
    if found is None:
        return problems + [f"evaluate.dataset: no such folder: {cfg.dataset}"]
    return problems + [f"evaluate.dataset: {found} has no {need} (evaluate.split={cfg.split!r})"
                       for need in ("queries.jsonl", f"qrels/{cfg.split}.tsv") if not (found / need).exists()]

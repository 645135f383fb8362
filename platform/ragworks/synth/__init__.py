"""Synthetic training data: LLM-generated queries and RAG examples, filters, hard negatives."""

from typing import Any

from ..stage import Outputs, StageDef
from .config import FiltersConfig, NegativesConfig, RagExamplesStageConfig, SynthesizeConfig


class GeneratedOutputs(Outputs):
    """Generated rows (`status=ok`) and the prompts that failed or did not parse (`status=reject`)."""

    generated: str
    rejects: str
    throughput: dict[str, float] = {}
    resumed_from_rows: int = 0  # rows a killed run had written: the report's rate counts only this run's


class FiltersOutputs(Outputs):
    kept: str
    dropped: str


class NegativesOutputs(Outputs):
    pairs: str


def claims_read(cfg: RagExamplesStageConfig) -> tuple[str, ...]:
    """rag_examples reads filters only for claim examples: a spec without them does not re-run when filters do."""
    return ("filters",) if cfg.rag.claims else ()


_GENERATED: dict[str, Any] = {"outputs": GeneratedOutputs, "resumable": True, "incremental": True}
STAGES = (
    StageDef("synthesize", SynthesizeConfig, "ragworks.synth.synthesize:run", needs=("corpus", "index"),
             external="ragworks.synth.synthesize:external_inputs", work=("rows", "generations"), **_GENERATED,
             check="ragworks.synth.config:check_synthesize", paths=("prompt.examples",),
             help="LLM-written queries (InPars / Promptagator few-shot) or RAFT examples, resumable"),
    StageDef("filters", FiltersConfig, "ragworks.synth.filters:run", FiltersOutputs, needs=("synthesize", "index"),
             work=("input", "queries"), help="clean-up, length, dedup and round-trip consistency of the queries"),
    StageDef("negatives", NegativesConfig, "ragworks.synth.negatives:run", NegativesOutputs,
             needs=("filters", "index"), work=("queries", "queries"),
             help="hard negatives from the index, with a false-negative guard"),
    StageDef("rag_examples", RagExamplesStageConfig, "ragworks.synth.rag_examples:run", needs=("corpus", "index"),
             optional=("filters",), reads=claims_read, external="ragworks.synth.synthesize:external_inputs",
             work=("rows", "examples"), **_GENERATED,
             check="ragworks.synth.config:check_rag_examples", paths=("prompt.examples",),
             help="RAFT question / cited answer / distractor examples for the generator"),
)

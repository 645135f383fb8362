"""Evaluation: BEIR-layout judgements, retrieval metrics, answer metrics, reports."""

from typing import Any

from ..stage import Outputs, StageDef
from .config import EvaluateConfig, GateConfig


class EvaluateOutputs(Outputs):
    report: str  # report.json
    markdown: str
    html: str | None = None  # report.html: self-contained, charts inline
    chart: str
    answers_chart: str | None = None
    metrics: dict[str, dict[str, float]] = {}
    generation: dict[str, dict[str, Any]] | None = None

    @classmethod
    def legacy(cls, manifest: dict, data: dict) -> dict:
        return super().legacy(manifest, {"report": data.get("json"), **data})


class GateOutputs(Outputs):
    """Which index is served, and the figures that chose it."""

    serve: str  # the index stage served: "index" (base) or "index_tuned"
    winner: str  # "base" or "tuned"
    decided_on: str  # "heldout" (synthetic queries no step trained on) or "dev" (a labelled set)
    forced: bool = False  # gate.serve named the winner
    min_gain: float = 0.0
    gains: dict[str, float] = {}  # mode -> tuned minus base nDCG@10 on the deciding queries
    scores: dict[str, dict[str, dict[str, float]]] = {}  # queries -> "mode (base|tuned)" -> metrics

    def reason(self) -> str:
        if self.forced:
            return f"gate.serve: {self.winner}"
        gains = ", ".join(f"{m} {g:+.4f}" for m, g in self.gains.items())
        return f"nDCG@10 gain of tuned on the {self.decided_on} queries: {gains}; needed > {self.min_gain:g} in each"


STAGES = (
    StageDef("gate", GateConfig, "ragworks.evaluate.gate:run", GateOutputs,
             needs=("index", "index_tuned", "train_retriever"), external="ragworks.evaluate.gate:external_inputs",
             prepare="ragworks.evaluate.config:implied_gate", check="ragworks.evaluate.config:check_gate",
             provides=("ship_choice",),
             help="base vs tuned index on held-out synthetic queries (and a dev set) in the served modes; "
                  "the winner is served (on whenever index_tuned is; `gate: null` turns it off)"),
    StageDef("evaluate", EvaluateConfig, "ragworks.evaluate.evaluate:run", EvaluateOutputs, needs=("index",),
             optional=("index_tuned", "train_generator", "filters", "gate", "train_reranker"),
             external="ragworks.evaluate.evaluate:external_inputs", check="ragworks.evaluate.config:check_evaluate",
             paths=("dataset",), last=True,
             help="nDCG@10, Recall@100, MRR@10 per search mode; answer metrics; report.html/.md/.json/.png"),
)

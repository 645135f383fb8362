"""Evaluation: BEIR-layout judgements, retrieval metrics, answer metrics, reports."""

from typing import Any

from ..config import EvaluateConfig
from ..stage import Outputs, StageDef


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


STAGES = (
    StageDef("evaluate", EvaluateConfig, "ragworks.evaluate.evaluate:run", EvaluateOutputs, needs=("index",),
             optional=("index_tuned", "train_generator", "filters"), external="ragworks.evaluate.evaluate:external_inputs",
             last=True, help="nDCG@10, Recall@100, MRR@10 per search mode; answer metrics; report.html/.md/.json/.png"),
)

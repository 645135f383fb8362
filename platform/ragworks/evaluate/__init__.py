"""Evaluation: BEIR-layout judgements, retrieval metrics, reports."""

from .metrics import evaluate_run, mrr_at_k, ndcg_at_k, recall_at_k
from .evaluate import external_inputs, run

__all__ = ["evaluate_run", "ndcg_at_k", "recall_at_k", "mrr_at_k", "run", "external_inputs"]

"""Retrieval metrics with trec_eval's conventions (linear gain, log2 discount),
so figures compare with BEIR's published ones."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

Qrels = Mapping[str, Mapping[str, int]]  # query id -> doc id -> relevance grade
Run = Mapping[str, Sequence[str]]  # query id -> ranked doc ids


def ndcg_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in rels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    relevant = {d for d, g in rels.items() if g > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if rels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


METRICS = {"ndcg@10": (ndcg_at_k, 10), "recall@100": (recall_at_k, 100), "mrr@10": (mrr_at_k, 10)}


def evaluate_run(run: Run, qrels: Qrels) -> dict[str, float]:
    """Means over every judged query; a query the run did not answer scores 0."""
    judged = [q for q, rels in qrels.items() if any(g > 0 for g in rels.values())]
    if not judged:
        raise ValueError("no query has a positive relevance judgement")
    return {name: sum(fn(run.get(q, []), qrels[q], k) for q in judged) / len(judged)
            for name, (fn, k) in METRICS.items()}

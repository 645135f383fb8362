"""Metric functions against values computed by hand."""

import math

import pytest

from ragworks.ranking_metrics import evaluate_run, mrr_at_k, ndcg_at_k, recall_at_k


def test_ndcg_hand_computed():
    # relevant a (grade 1) at rank 2 and c (grade 2) at rank 3; ideal order c, a
    rels = {"a": 1, "c": 2}
    dcg = 1 / math.log2(3) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(["x", "a", "c"], rels, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["x", "a", "c"], rels, 10) == pytest.approx(0.6199, abs=1e-4)
    assert ndcg_at_k(["c", "a"], rels, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "a", "c"], rels, 1) == 0.0  # cut-off applies


def test_recall_and_mrr_hand_computed():
    rels = {"a": 1, "b": 1, "z": 0}
    assert recall_at_k(["a", "x", "b"], rels, 2) == 0.5
    assert recall_at_k(["a", "x", "b"], rels, 3) == 1.0
    assert mrr_at_k(["x", "y", "b"], rels, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["x", "y", "b"], rels, 2) == 0.0
    assert mrr_at_k(["z"], rels, 10) == 0.0  # grade 0 is not relevant


def test_evaluate_run_means_over_judged_queries():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}  # q3 has no positive: not judged
    run = {"q1": ["a"], "q2": ["x", "b"]}
    m = evaluate_run(run, qrels)
    assert m["mrr@10"] == pytest.approx((1 + 0.5) / 2)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert evaluate_run({}, qrels)["recall@100"] == 0.0  # unanswered queries score zero


def test_held_out_claims_and_questions_are_scored_apart():
    from ragworks.evaluate.generation import by_kind

    claim, question = {"key": "claim:12#0:0"}, {"key": "12#0:0"}
    assert by_kind([question, claim, question]) == {"claims": [claim], "questions": [question, question]}
    assert by_kind([question, question]) == {}  # one kind: the overall scores say it all

"""Model selection: held-out synthetic pairs (no human labels) or a labelled BEIR dev set.

Held-out: each held-out query is ranked against the pool of every held-out
positive and hard negative; its own positive is the one relevant passage. The
pool is small, so the absolute figure is high, but it moves with what training
does to the model. Dev set: judged queries against their judged documents plus
a fixed sample of the rest of the corpus, bounded so that scoring a checkpoint
stays cheap on a large corpus.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from ..beir import load_qrels, load_queries
from ..ranking_metrics import mrr_at_k, ndcg_at_k, recall_at_k
from .config import DevSetConfig


def score(model, queries: list[str], pool: dict[str, str], qrels: list[dict[str, int]], prefix: str,
          batch_size: int = 64) -> dict[str, float]:
    """nDCG/MRR/Recall@10 of ranking `pool` for each query, as `{prefix}_ndcg@10`, ..."""
    if not queries:  # nothing to score: every checkpoint ties and the last one is exported
        return {f"{prefix}_ndcg@10": 0.0, f"{prefix}_queries": 0}
    ids = list(pool)
    enc = dict(batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    docs = model.encode([pool[i] for i in ids], **enc)
    top = np.argsort(-(model.encode(queries, **enc) @ docs.T), axis=1)[:, :10]
    runs = [([ids[j] for j in ranked], rels) for ranked, rels in zip(top, qrels)]
    n = len(runs)
    return {f"{prefix}_ndcg@10": sum(ndcg_at_k(r, q, 10) for r, q in runs) / n,
            f"{prefix}_mrr@10": sum(mrr_at_k(r, q, 10) for r, q in runs) / n,
            f"{prefix}_recall@10": sum(recall_at_k(r, q, 10) for r, q in runs) / n,
            f"{prefix}_queries": n, f"{prefix}_pool": len(ids)}


def heldout_metrics(model, rows: dict[str, list]) -> dict[str, float]:
    pool: dict[str, str] = {}
    for pid, text, nids, ntexts in zip(rows["positive_id"], rows["positive"], rows["negative_ids"], rows["negatives"]):
        pool.setdefault(pid, text)
        for nid, ntext in zip(nids, ntexts):
            pool.setdefault(nid, ntext)
    return score(model, list(rows["query"]), pool, [{pid: 1} for pid in rows["positive_id"]], "val")


def load_dev(cfg: DevSetConfig, seed: int = 0) -> dict:
    """Judged queries, their judgements and the document pool, titles prepended as the corpus stage does."""
    folder = Path(cfg.dataset)
    qrels = load_qrels(folder, cfg.split)
    queries = load_queries(folder, set(qrels))
    qids = sorted(q for q in queries if any(s > 0 for s in qrels[q].values()))[: cfg.max_queries]
    if not qids:
        raise ValueError(f"{folder}: no judged queries for split '{cfg.split}' (qrels/{cfg.split}.tsv, queries.jsonl)")
    judged = {d for q in qids for d in qrels[q]}
    docs: dict[str, str] = {}
    with (folder / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                docs[str(d["_id"])] = f"{d['title']}\n{d['text']}" if d.get("title") else d["text"]
    others = sorted(set(docs) - judged)
    keep = judged & set(docs) | set(random.Random(seed).sample(others, max(0, min(len(others), cfg.max_corpus - len(judged)))))
    return {"queries": [queries[q] for q in qids], "qrels": [qrels[q] for q in qids],
            "pool": {d: docs[d] for d in sorted(keep)}}


def dev_metrics(model, dev: dict) -> dict[str, float]:
    return score(model, dev["queries"], dev["pool"], dev["qrels"], "dev")

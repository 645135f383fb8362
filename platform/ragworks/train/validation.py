"""Model selection on held-out synthetic pairs: no human labels needed.

Each held-out query is ranked against the pool of every held-out positive and
hard negative; its own positive is the one relevant passage. The pool is small,
so the absolute figure is high, but it moves with what training does to the
model, and it is what picks the exported checkpoint.
"""

from __future__ import annotations

import numpy as np

from ..evaluate.metrics import mrr_at_k, ndcg_at_k, recall_at_k


def heldout_metrics(model, rows: dict[str, list], batch_size: int = 64) -> dict[str, float]:
    pool: dict[str, str] = {}
    for pid, text, nids, ntexts in zip(rows["positive_id"], rows["positive"], rows["negative_ids"], rows["negatives"]):
        pool.setdefault(pid, text)
        for nid, ntext in zip(nids, ntexts):
            pool.setdefault(nid, ntext)
    if not rows["query"]:  # nothing held out: every checkpoint ties and the last one is exported
        return {"val_ndcg@10": 0.0, "val_queries": 0}
    ids = list(pool)
    enc = dict(batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    docs = model.encode([pool[i] for i in ids], **enc)
    queries = model.encode(list(rows["query"]), **enc)
    top = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    per_query = [([ids[j] for j in ranked], {pid: 1}) for ranked, pid in zip(top, rows["positive_id"])]
    n = len(per_query)
    return {"val_ndcg@10": sum(ndcg_at_k(r, q, 10) for r, q in per_query) / n,
            "val_mrr@10": sum(mrr_at_k(r, q, 10) for r, q in per_query) / n,
            "val_recall@10": sum(recall_at_k(r, q, 10) for r, q in per_query) / n,
            "val_queries": n, "val_pool": len(ids)}

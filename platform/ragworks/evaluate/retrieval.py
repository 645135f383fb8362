"""Judged queries against a whole index, in each search mode: what `evaluate` reports and `gate` decides on.

A query's hits are chunks; they are ranked by the unit the judgements name: the
document (BEIR qrels; a document ranks where its best chunk does) or the chunk
itself (a synthetic query's own chunk).
"""

from __future__ import annotations

from ..sections import Mode
from ..ranking_metrics import evaluate_run

RERANKED = " + rerank"


def rank_by(hits: list[dict], key: str = "doc_id", k: int = 100) -> list[str]:
    """Hits to a ranking of `key`s, each at its first (best) hit's place."""
    seen: dict[str, None] = {}
    for h in hits:
        seen.setdefault(h[key], None)
        if len(seen) == k:
            break
    return list(seen)


def score_modes(searcher, queries: dict[str, str], qrels: dict[str, dict[str, int]], modes: list[Mode], *,
                candidates: int, key: str = "doc_id", suffix: str = "", reranker=None, batch_size: int = 64,
                console=None, skip: set[str] = frozenset(), rerank_modes: list[Mode] | None = None
                ) -> dict[str, dict[str, float]]:
    """`{label: metrics}` per mode, the label being the mode plus `suffix` (full-text takes none: it does not
    depend on the embedder) and, with a reranker, each of `rerank_modes` (default: all) again with " + rerank".
    Labels in `skip` are not run.
    """
    from rich.progress import track

    qids = sorted(queries)
    texts = [queries[q] for q in qids]
    vectors = searcher.embed(texts, batch_size=batch_size) if set(modes) & {"dense", "hybrid"} else None
    out: dict[str, dict[str, float]] = {}
    for mode in modes:
        label = mode if mode == "fulltext" else mode + suffix
        again = reranker is not None and (rerank_modes is None or mode in rerank_modes)
        for name, rr in [(label, None)] + ([(label + RERANKED, reranker)] if again else []):
            if name in skip or name in out:
                continue
            ranked = {}
            steps = track(range(len(qids)), description=f"{name:>24}", console=console, transient=True,
                          disable=console is None or not console.is_terminal)  # a log: no blank line each
            for i in steps:
                hits = searcher.search(texts[i], mode=mode, k=candidates, reranker=rr,
                                       vector=None if vectors is None else vectors[i])
                ranked[qids[i]] = rank_by(hits, key, 100)
            out[name] = evaluate_run(ranked, qrels)
    return out

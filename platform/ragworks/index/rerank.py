"""A cross-encoder re-scoring the top hits of any search mode.

A bi-encoder embeds query and passage apart; a cross-encoder reads them
together, so it ranks better and costs one forward pass per (query, hit): it
re-scores only the first `top_k` hits (monoBERT, Nogueira and Cho, 2019; the
reranker stage of Promptagator and InPars). sentence-transformers' `CrossEncoder`
loads any Hugging Face cross-encoder, or an encoder with a new one-logit head.
"""

from __future__ import annotations

from ..models import DEFAULT_EMBEDDER, resolve_model
from .config import RerankConfig


def load_cross_encoder(name: str, max_length: int = 256, device: str = "cpu"):
    """Any cross-encoder id or path; 'base' or 'bundled:NAME' is a bundled encoder with a new scoring head."""
    from sentence_transformers import CrossEncoder

    from ..runtime import limit_torch_threads

    limit_torch_threads()
    return CrossEncoder(resolve_model(DEFAULT_EMBEDDER if name == "base" else name), num_labels=1,
                        max_length=max_length, device=device)


class Reranker:
    """Re-orders a search's first `top_k` hits by the cross-encoder's score; `score` becomes that score and the
    first-stage score is kept as `retrieval_score`."""

    def __init__(self, cfg: RerankConfig, model_path: str | None = None):
        self.cfg = cfg
        self.model_path = model_path or cfg.model
        self.model = load_cross_encoder(self.model_path, cfg.max_length)

    @property
    def top_k(self) -> int:
        return self.cfg.top_k

    def scores(self, query: str, texts: list[str]) -> list[float]:
        if not texts:
            return []
        out = self.model.predict([(query, t) for t in texts], batch_size=self.cfg.batch_size,
                                 convert_to_numpy=True, show_progress_bar=False)
        return [float(s) for s in out]

    def rerank(self, query: str, hits: list[dict], k: int) -> list[dict]:
        head, tail = hits[: self.top_k], hits[self.top_k:]
        for hit, score in zip(head, self.scores(query, [h["text"] for h in head])):
            hit["retrieval_score"], hit["score"] = hit["score"], score
        head.sort(key=lambda h: -h["score"])
        return (head + tail)[:k]


def rerank_model(cfg: RerankConfig | None, trained: str | None) -> str | None:
    """The model a rerank section names: 'reranker' is the job's trained one (`trained`), which must exist."""
    if cfg is None:
        return None
    if cfg.model != "reranker":
        return cfg.model
    if trained is None:
        raise ValueError("rerank.model 'reranker' names the job's train_reranker model, and the job has none: "
                         "add a train_reranker section or name a cross-encoder")
    return trained

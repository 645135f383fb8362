"""The cross-encoder training loop that every Ray Train worker runs (stage `train_reranker`).

Each synthetic query is paired with its own chunk (label 1) and its mined hard
negatives (label 0), and the cross-encoder learns to tell them apart with binary
cross-entropy, as InPars trains its rerankers on generated queries (Bonifacio et
al., 2022; UDAPDR distils such rerankers, Saad-Falcon et al., 2023). The same
step loop, checkpoints and resume as the retriever (`steps.py`).
"""

from __future__ import annotations

import numpy as np
import ray.train

from ..index.rerank import load_cross_encoder
from ..ranking_metrics import mrr_at_k, ndcg_at_k
from .config import TrainRerankerConfig
from .loop import collect
from .steps import checkpointer, make_optimizer, restore, run_steps, start_worker

METRIC = "val_ndcg@10"
POOL = 10  # candidates per held-out query: its positive, its negatives, then other queries' positives


def heldout_metrics(model, rows: dict[str, list], batch_size: int = 32) -> dict[str, float]:
    """Each held-out query re-ranks a pool of its positive, its hard negatives and the next queries' positives
    (a cross-encoder scores every pair, so the pool is bounded per query, unlike the retriever's shared pool)."""
    n = len(rows["query"])
    if n == 0:
        return {f"{METRIC}": 0.0, "val_queries": 0}
    ndcg = mrr = 0.0
    for i, query in enumerate(rows["query"]):
        pool = {rows["positive_id"][i]: rows["positive"][i]}
        pool.update(zip(rows["negative_ids"][i], rows["negatives"][i]))
        for j in range(1, n):
            if len(pool) >= POOL:
                break
            pool.setdefault(rows["positive_id"][(i + j) % n], rows["positive"][(i + j) % n])
        ids = list(pool)
        scores = model.predict([(query, pool[d]) for d in ids], batch_size=batch_size, show_progress_bar=False)
        ranked = [ids[k] for k in np.argsort(-np.asarray(scores))]
        rels = {rows["positive_id"][i]: 1}
        ndcg, mrr = ndcg + ndcg_at_k(ranked, rels, 10), mrr + mrr_at_k(ranked, rels, 10)
    return {METRIC: ndcg / n, "val_mrr@10": mrr / n, "val_queries": n}


def reranker_loop(config: dict) -> None:
    import torch
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    cfg = TrainRerankerConfig(**config["cfg"])
    rank, world, device = start_worker(cfg)
    model, state, saved = restore(lambda: load_cross_encoder(config["model_path"], cfg.max_length, str(device)),
                                  lambda folder, _: load_cross_encoder(str(folder / "model"), cfg.max_length, str(device)))
    loss = ray.train.torch.prepare_model(BinaryCrossEntropyLoss(model),
                                         parallel_strategy_kwargs={"find_unused_parameters": True})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(params, cfg, config, saved, state, rank)
    val = collect(ray.train.get_dataset_shard("val")) if rank == 0 else None

    def score() -> dict:
        model.eval()
        metrics = heldout_metrics(model, val)
        model.train()
        return metrics

    checkpoint = checkpointer(state, rank, score, write=lambda folder: model.save(str(folder / "model")),
                              extra=lambda: {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
    if saved is None:
        checkpoint()  # the untrained head scores too: a run that does not learn exports it, and says so

    def loss_of(batch):
        queries, positives = batch.column("query").to_pylist(), batch.column("positive").to_pylist()
        negatives = [n[: cfg.negatives] for n in batch.column("negatives").to_pylist()]
        pairs = [(q, p, 1.0) for q, p in zip(queries, positives)]
        pairs += [(q, n, 0.0) for q, ns in zip(queries, negatives) for n in ns]
        labels = torch.tensor([p[2] for p in pairs], device=device)
        return loss([[p[0] for p in pairs], [p[1] for p in pairs]], labels)

    model.train()
    run_steps(cfg, config, state, config["total_steps"], loss_of, (params, optimizer, scheduler), checkpoint,
              unit="pairs")

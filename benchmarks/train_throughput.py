"""Retriever training throughput: Ray Train (1 worker) vs the plain sentence-transformers trainer.

Same data (SciFact titles as queries, their abstracts as positives, another
abstract as the hard negative), same model, batch, steps, learning rate and loss
(multiple-negatives ranking with one hard negative). The plain side is
`SentenceTransformerTrainer` in this process with torch on every core; the Ray
side is the `train_retriever` stage's TorchTrainer and loop, its worker given the
cores less half a CPU for the data tasks. Prints training pairs/s of each (time
in training steps, data waits included; start-up and checkpoints shown apart)
and the ratio (target >= 0.8).

    python benchmarks/train_throughput.py [--steps 40] [--batch-size 32] [--max-seq-length 128]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from ragworks.train.config import TrainRetrieverConfig
from ragworks.models import resolve_embedder


def pairs(dataset: str, n: int, seed: int = 0) -> list[dict]:
    docs = [json.loads(line) for line in open(Path(dataset) / "corpus.jsonl")][: n + 1]
    rng = random.Random(seed)
    out = []
    for i, d in enumerate(docs[:n]):
        j = rng.choice([k for k in range(len(docs)) if k != i])
        out.append({"query": d["title"], "positive": d["text"], "positive_id": d["_id"],
                    "negatives": [docs[j]["text"]], "negative_ids": [docs[j]["_id"]]})
    return out


def plain(rows: list[dict], cfg: TrainRetrieverConfig, steps: int) -> tuple[float, float]:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(resolve_embedder(cfg.model), device="cpu")
    model.max_seq_length = cfg.max_seq_length
    data = Dataset.from_list([{"anchor": r["query"], "positive": r["positive"], "negative": r["negatives"][0]} for r in rows])
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out, per_device_train_batch_size=cfg.batch_size, max_steps=steps, learning_rate=cfg.learning_rate,
            warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay, max_grad_norm=1.0, save_strategy="no",
            report_to=[], use_cpu=True, dataloader_drop_last=True, logging_steps=10_000, seed=cfg.seed)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                             loss=MultipleNegativesRankingLoss(model, scale=cfg.scale))
        t0 = time.perf_counter()
        out = trainer.train()
        wall = time.perf_counter() - t0
    return steps * cfg.batch_size / out.metrics["train_runtime"], wall


def with_ray(rows: list[dict], cfg: TrainRetrieverConfig, steps: int) -> tuple[float, float]:
    import ray

    from ragworks.train.train_retriever import make_trainer

    train = ray.data.from_items(rows)
    val = ray.data.from_items(rows[:32])
    with tempfile.TemporaryDirectory() as storage:
        t0 = time.perf_counter()
        result = make_trainer(cfg, resolve_embedder(cfg.model), steps, train, val, Path(storage)).fit()
        wall = time.perf_counter() - t0
    final = max((m for _, m in result.best_checkpoints), key=lambda m: m["step"])
    return final["step"] * cfg.batch_size / final["train_seconds"], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="../shared/data/scifact")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=128)
    args = ap.parse_args()

    import ray

    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
    cfg = TrainRetrieverConfig(batch_size=args.batch_size, max_seq_length=args.max_seq_length, negatives=1,
                               learning_rate=1e-5, workers=1)
    rows = pairs(args.dataset, args.steps * args.batch_size)

    st_rate, st_wall = plain(rows, cfg, args.steps)
    ray_rate, ray_wall = with_ray(rows, cfg, args.steps)
    print(f"\n{args.steps} steps x {args.batch_size} pairs (1 hard negative each), max_seq_length {args.max_seq_length}, "
          f"cpus {cpus}")
    print(f"sentence-transformers trainer, one process: {st_rate:7.2f} pairs/s  (wall {st_wall:6.1f} s)")
    print(f"Ray Train, 1 worker (train_retriever)     : {ray_rate:7.2f} pairs/s  (wall {ray_wall:6.1f} s, "
          f"with start-up, the base model's and the last checkpoint)")
    print(f"ratio ray/plain: {ray_rate / st_rate:.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()

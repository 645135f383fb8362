"""The retriever training loop that every Ray Train worker runs.

sentence-transformers supplies the model and the loss (multiple-negatives
ranking: each query against its positive, its hard negatives and every other
pair's passages, gathered from all workers); Ray Train supplies the process
group, the data shard and checkpoints. Wrapping the *loss* in DDP (it holds the
model) keeps gradients in sync without touching how the loss calls the model.
"""

from __future__ import annotations

from pathlib import Path

import ray.train

from .config import TrainRetrieverConfig
from .steps import checkpointer, make_optimizer, restore, run_steps, start_worker
from .validation import dev_metrics, heldout_metrics, load_dev

COLUMNS = ["query", "positive", "positive_id", "negatives", "negative_ids"]  # a training row


def selection_metric(cfg: TrainRetrieverConfig) -> str:
    """The checkpoint score Ray Train keeps the best of and the stage exports."""
    return "dev_ndcg@10" if cfg.select_on == "dev" else "val_ndcg@10"


def load_model(path: str, cfg: TrainRetrieverConfig, device: str):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device)
    model.max_seq_length = cfg.max_seq_length
    if cfg.lora is not None:
        # peft itself, not model.add_adapter(): transformers' adapter integration pins newer peft releases.
        from peft import LoraConfig, get_peft_model

        model[0].model = get_peft_model(model[0].model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=cfg.lora.target_modules))
    return model


def exportable(model, cfg: TrainRetrieverConfig):
    """The model as users load it: LoRA adapters merged into plain weights, no peft needed to use it."""
    if cfg.lora is None:
        return model
    import copy

    merged = copy.deepcopy(model)
    merged[0].model = merged[0].model.merge_and_unload()
    return merged


def adapter_state(model, cfg: TrainRetrieverConfig) -> dict | None:
    if cfg.lora is None:
        return None
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model[0].model)


def build_loss(model, cfg: TrainRetrieverConfig, world: int):
    """Multiple-negatives ranking (contrastive), MarginMSE on a teacher's margins (GPL), or their sum.

    MarginMSE compares the student's margin sim(q, pos) - sim(q, neg) with the teacher's logit margin; the
    student's similarity is the cosine times `scale`, the same logits the ranking loss reads, so both losses
    see one score scale (a bare cosine cannot reach a cross-encoder's margins of several units).
    """
    import torch
    from sentence_transformers.sentence_transformer.losses import (MarginMSELoss, MatryoshkaLoss,
                                                                   MultipleNegativesRankingLoss)
    from sentence_transformers.util import pairwise_cos_sim

    def scaled_cosine(a, b):
        return cfg.scale * pairwise_cos_sim(a, b)

    parts = []
    if "contrastive" in cfg.losses:
        parts.append(MultipleNegativesRankingLoss(model, scale=cfg.scale, gather_across_devices=world > 1))
    if "margin_mse" in cfg.losses:
        parts.append(MarginMSELoss(model, similarity_fct=scaled_cosine))
    if cfg.matryoshka_dims:
        parts = [MatryoshkaLoss(model, p, matryoshka_dims=cfg.matryoshka_dims) for p in parts]
    if len(parts) == 1:
        return parts[0]

    class Summed(torch.nn.Module):
        def __init__(self, losses):
            super().__init__()
            self.losses = torch.nn.ModuleList(losses)

        def forward(self, features, labels):
            return sum(loss(features, labels) for loss in self.losses)

    return Summed(parts)


def collect(iterator) -> dict[str, list]:
    """The held-out slice (bounded by validation_max) as columns."""
    cols: dict[str, list] = {name: [] for name in COLUMNS}
    for batch in iterator.iter_batches(batch_size=256, batch_format="pyarrow"):
        for name in cols:
            cols[name].extend(batch.column(name).to_pylist())
    return cols


def train_loop(config: dict) -> None:
    cfg = TrainRetrieverConfig(**config["cfg"])
    rank, world, device = start_worker(cfg)
    def from_checkpoint(folder: Path, saved: dict):
        if cfg.lora is None:
            return load_model(str(folder / "model"), cfg, str(device))
        from peft import set_peft_model_state_dict  # the saved model has the adapters merged: reload them

        model = load_model(config["model_path"], cfg, str(device))
        set_peft_model_state_dict(model[0].model, saved["adapter"])
        return model

    model, state, saved = restore(lambda: load_model(config["model_path"], cfg, str(device)), from_checkpoint)
    loss = ray.train.torch.prepare_model(build_loss(model, cfg, world),
                                         parallel_strategy_kwargs={"find_unused_parameters": True})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(params, cfg, config, saved, state, rank)
    total = config["total_steps"]

    val = collect(ray.train.get_dataset_shard("val")) if rank == 0 else None
    dev = load_dev(cfg.dev, cfg.seed) if rank == 0 and cfg.dev else None

    def score() -> dict:
        model.eval()
        metrics = heldout_metrics(model, val)
        if dev is not None:
            metrics.update(dev_metrics(model, dev))
        model.train()
        return metrics

    checkpoint = checkpointer(
        state, rank, score, write=lambda folder: exportable(model, cfg).save(str(folder / "model")),
        extra=lambda: {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "adapter": adapter_state(model, cfg)})
    if saved is None:
        checkpoint()  # the base model is a candidate too: training must beat it on held-out pairs

    def loss_of(batch):
        texts = [batch.column("query").to_pylist(), batch.column("positive").to_pylist()]
        negs = batch.column("negatives").to_pylist()
        texts += [[n[k] for n in negs] for k in range(cfg.negatives)]
        features = [{k: v.to(device) if hasattr(v, "to") else v for k, v in model.preprocess(t).items()} for t in texts]
        labels = None
        if "margin_mse" in cfg.losses:  # the teacher's [pos, neg_1..neg_k] scores: MarginMSE takes their margins
            import torch

            labels = torch.tensor(batch.column("teacher").to_pylist(), dtype=torch.float32, device=device)
        return loss(features, labels)

    model.train()
    run_steps(cfg, config, state, total, loss_of, (params, optimizer, scheduler), checkpoint, unit="pairs")

"""The training stages' sections of a job spec: what every Ray Train stage shares, and each model's own."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..sections import RESOURCES_HELP, Section, resolve_input


class LoraConfig(Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="default: the attention projections peft knows for the model")


class DevSetConfig(Section):
    dataset: str = Field(..., description="BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv) read by the rank-0 worker")
    split: str = "dev"
    max_queries: int = Field(200, ge=1, description="judged queries scored at each checkpoint (the first N by id)")
    max_corpus: int = Field(5000, ge=1, description="documents ranked: every judged one plus a fixed sample of the rest")


class TrainerConfig(Section):
    """What every Ray Train stage shares: steps, optimizer, workers, checkpoints, held-out slice."""

    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (default: every epoch)")
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    workers: int = Field(1, ge=1, description="Ray Train workers (one process each; gloo on CPU, nccl on GPU)")
    use_gpu: bool = False
    cpus_per_worker: float | None = Field(None, gt=0, description="default: the cluster's CPUs / workers, less a "
                                                                     "share for the data tasks that feed them, at most one node's CPUs")
    resources: dict[str, float] = Field(default_factory=dict, description=RESOURCES_HELP)
    checkpoint_every: int | None = Field(None, ge=1, description="steps between checkpoints (default: every epoch)")
    max_failures: int = Field(2, ge=0, description="worker failures to survive, resuming from the last checkpoint")
    seed: int = 0
    retrain_after: float = Field(0.1, ge=0.0, le=1.0, description="on a corpus update, train again only once the "
                                 "documents changed since the last training reach this share of the corpus; below "
                                 "it the last model is kept (and the ship gate decides again). 0: always train")


class TrainRetrieverConfig(TrainerConfig):
    model: str = Field("base", description="start from: 'base' (the bundled embedder), 'bundled:NAME', a Hugging Face id or a path")
    batch_size: int = Field(32, ge=2, description="pairs per step over all workers; each query's in-batch negatives are the other pairs")
    learning_rate: float = Field(1e-5, gt=0.0, description="small: a high rate washes out what the base model knows")
    negatives: int = Field(1, ge=0, description="hard negatives per query from the negatives stage (0: in-batch only)")
    scale: float = Field(20.0, gt=0.0, description="similarity scale of the ranking loss (1 / temperature)")
    max_seq_length: int = Field(256, ge=8, description="tokens per text; longer texts are cut")
    matryoshka_dims: list[int] | None = Field(None, description="also train these truncated embedding sizes (Matryoshka)")
    lora: LoraConfig | None = Field(None, description="train LoRA adapters instead of every weight (large embedders)")
    validation_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="pairs held out for model selection, by chunk")
    validation_max: int = Field(500, ge=1)
    dev: DevSetConfig | None = Field(None, description="also score every checkpoint on a labelled BEIR dev set")
    select_on: Literal["heldout", "dev"] = Field("heldout", description="which score picks the exported checkpoint")
    teacher: str | None = Field(None, description="a cross-encoder scoring each (query, positive, negative): 'reranker' "
                                "(the job's train_reranker model), a Hugging Face id or a path; trains on its score "
                                "margins (GPL, MarginMSE)")
    loss: Literal["contrastive", "margin_mse", "both"] | None = Field(None, description="contrastive: multiple-negatives "
                                                                     "ranking; margin_mse: the teacher's margins; both: "
                                                                     "their sum (default: margin_mse with a teacher)")
    teacher_batch_size: int = Field(32, ge=1, description="pairs per teacher call in the scoring actor pool")
    teacher_concurrency: tuple[int, int] = Field((1, 2), description="teacher scoring actor pool: (min, max)")

    @model_validator(mode="after")
    def _dev_named(self):
        if self.select_on == "dev" and self.dev is None:
            raise ValueError("select_on: dev needs a dev set (train_retriever.dev.dataset)")
        if self.loss in ("margin_mse", "both") and self.teacher is None:
            raise ValueError(f"loss: {self.loss} needs a teacher (train_retriever.teacher: 'reranker', a "
                             "cross-encoder id or a path)")
        if self.teacher is not None and self.negatives < 1:
            raise ValueError("teacher: the margins need hard negatives (train_retriever.negatives >= 1)")
        return self

    @property
    def losses(self) -> tuple[str, ...]:
        """The losses summed at each step."""
        loss = self.loss or ("margin_mse" if self.teacher else "contrastive")
        return ("contrastive", "margin_mse") if loss == "both" else (loss,)


class TrainRerankerConfig(TrainerConfig):
    model: str = Field("base", description="start from: 'base' (the bundled embedder's weights with a new scoring "
                       "head), a cross-encoder or any Hugging Face encoder id, or a path")
    batch_size: int = Field(16, ge=1, description="(query, positive) pairs per step over all workers; each brings "
                            "its hard negatives")
    learning_rate: float = Field(2e-5, gt=0.0)
    negatives: int = Field(1, ge=1, description="hard negatives per query from the negatives stage, labelled 0")
    max_length: int = Field(256, ge=16, description="tokens of query and passage together; longer pairs are cut")
    validation_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="pairs held out for model selection, by chunk")
    validation_max: int = Field(300, ge=1)


class TrainGeneratorConfig(TrainerConfig):
    model: str = Field("bundled:smollm2-135m-instruct", description="causal LM: 'bundled:NAME', a Hugging Face id or a path")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="the adapter trained (PEFT LoRA)")
    batch_size: int = Field(8, ge=1, description="examples per step over all workers")
    learning_rate: float = Field(2e-4, gt=0.0, description="LoRA trains few weights: rates of 1e-4..5e-4 are usual")
    weight_decay: float = Field(0.0, ge=0.0)
    max_seq_length: int = Field(768, ge=32, description="tokens per example; the prompt is cut from the left to fit")
    max_context_words: int = Field(120, ge=8, description="each context chunk is cut to this many words in the prompt")
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="examples held out (by oracle chunk) for "
                                       "model selection and for the evaluate stage's answer metrics")
    validation_max: int = Field(100, ge=1)
    merged: bool = Field(False, description="also export the base model with the adapter merged in (`merged/`)")


def dev_set(name: str, dev: DevSetConfig | None, spec_dir: Path) -> list[str]:
    """A section's labelled dev set, resolved in place (train_retriever's and the gate's)."""
    if dev is not None and resolve_input(dev, "dataset", spec_dir) is None:
        return [f"{name}.dev.dataset: no such folder: {dev.dataset}"]
    return []


def check_retriever(spec, spec_dir: Path) -> list[str]:
    problems = dev_set("train_retriever", spec.train_retriever.dev, spec_dir)
    if spec.train_retriever.teacher == "reranker" and getattr(spec, "train_reranker", None) is None:
        problems.append("train_retriever.teacher 'reranker' is the job's train_reranker model: add a "
                        "train_reranker section, or name a cross-encoder")
    return problems

"""Fine-tuning on Ray Train: the retriever (contrastive, hard negatives) and the generator (LoRA, RAFT)."""

from .train_generator import run as run_generator
from .train_retriever import external_inputs
from .train_retriever import run as run_retriever

__all__ = ["external_inputs", "run_generator", "run_retriever"]

"""Fine-tuning on Ray Train: the retriever (contrastive, hard negatives)."""

from .retriever import external_inputs
from .retriever import run as run_retriever

__all__ = ["external_inputs", "run_retriever"]

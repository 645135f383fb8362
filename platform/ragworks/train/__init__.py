"""Fine-tuning on Ray Train: the retriever (contrastive, hard negatives)."""

from .retriever import run as run_retriever

__all__ = ["run_retriever"]

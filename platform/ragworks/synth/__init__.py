"""Synthetic training data: LLM-generated queries and RAG examples, filters, hard negatives."""

from .filters import run as run_filters
from .negatives import run as run_negatives
from .synthesize import external_inputs
from .synthesize import run as run_synthesize

__all__ = ["run_synthesize", "run_filters", "run_negatives", "external_inputs"]

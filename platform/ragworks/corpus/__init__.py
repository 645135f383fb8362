"""Corpus processing: raw records to clean, deduplicated, token-aware chunks."""

from .stage import external_inputs, run

__all__ = ["run", "external_inputs"]

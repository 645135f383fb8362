"""Corpus processing: raw records to clean, deduplicated, token-aware chunks."""

from .corpus import external_inputs, run

__all__ = ["run", "external_inputs"]

"""The LanceDB index: build it (stage `index`) and search it (dense, full-text, hybrid)."""

from .search import Searcher, open_index
from .stage import external_inputs, run

__all__ = ["Searcher", "open_index", "run", "external_inputs"]

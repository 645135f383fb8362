"""The LanceDB index: build it (stage `index`) and search it (dense, full-text, hybrid)."""

from .search import IndexActor, Searcher, open_index, unit
from .index import external_inputs, run

__all__ = ["IndexActor", "Searcher", "open_index", "unit", "run", "external_inputs"]

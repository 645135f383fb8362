"""The LanceDB index: build it (stages `index`, `index_tuned`) and search it (dense, full-text, hybrid)."""

from typing import Any, Literal

from ..stage import Outputs, StageDef
from .config import IndexConfig


class IndexOutputs(Outputs):
    """The table and how to search it: every stage and the server open an index from these alone."""

    lancedb: str
    table: str
    embedder: str
    metric: str = "cosine"
    nprobes: int = 32
    ef: int | Literal["auto"] | None = None  # an index built before `ann.ef` searched with LanceDB's default
    refine_factor: int | None = None
    hybrid: dict[str, Any] = {"fusion": "rrf"}  # an index built before fusion was configurable fused by rank
    indexes: list[str] = []
    version: int | None = None  # the table version a search opens: later ones may be an update under way
    ann_rows: int = 0  # rows the vector index was trained on: an update retrains it past ann.retrain_fraction
    fts_deleted: int = 0  # rows deleted since the full-text index was built: an update rebuilds it past
    # fulltext.rebuild_fraction

    @classmethod
    def legacy(cls, manifest: dict, data: dict) -> dict:
        # metric and hybrid sit at the config's top level (the shared fill finds them); the ANN settings under `ann`
        ann = (manifest.get("config") or {}).get("ann") or {}
        return super().legacy(manifest, {**{k: ann[k] for k in ("nprobes", "ef", "refine_factor") if k in ann}, **data})


STAGES = (
    StageDef("index", IndexConfig, "ragworks.index.index:run", IndexOutputs, needs=("corpus",),
             work=("rows", "chunks"), incremental=True, served=True, check="ragworks.index.config:check",
             provides=("index",),
             help="embed the chunks in an actor pool; LanceDB table, ANN and full-text indexes; a corpus delta "
                  "is applied in place"),
    StageDef("index_tuned", IndexConfig, "ragworks.index.index_tuned:run", IndexOutputs,
             needs=("corpus", "train_retriever"), work=("rows", "chunks"), incremental=True, served=True,
             prepare="ragworks.index.config:implied_index_tuned", check="ragworks.index.config:check_tuned",
             provides=("tuned_index",),
             help="the same chunks re-embedded with train_retriever's model (`index.embedder: trained` sets this "
                  "section to the index section)"),
)

_SEARCH = ("IndexActor", "Searcher", "open_index", "unit")


def __getattr__(name: str):
    """`from ragworks.index import open_index` without loading LanceDB for `ragworks --help`."""
    if name in _SEARCH:
        from . import search

        return getattr(search, name)
    raise AttributeError(name)

"""Stage `index_tuned`: the corpus's chunks re-embedded with train_retriever's model, as `index` built them.

The first index keeps the base model: filters and negatives searched it, and
evaluate scores both side by side.
"""

from __future__ import annotations

from . import IndexOutputs
from .config import IndexConfig
from .index import build


def run(cfg: IndexConfig, ctx) -> IndexOutputs:
    return build(cfg, ctx, ctx.output("train_retriever").model)

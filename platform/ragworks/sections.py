"""The base every spec section shares, and the types more than one section names.

Kept apart from `config.py` so that the engines' and stages' config classes can
build on it without importing the whole job spec.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A spec section: unknown keys are errors (a typo must not fall back to a default silently)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


RESOURCES_HELP = ("custom Ray resources each actor or worker needs, e.g. {synth: 1}: it runs only on nodes that "
                  "advertise them, and an autoscaler adds such nodes (cluster/README.md)")

# How an index is searched: by vectors, by words (BM25), or both fused.
Mode = Literal["dense", "fulltext", "hybrid"]

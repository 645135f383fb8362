"""The base every spec section shares, and the types more than one section names.

Kept apart from `config.py` so that the engines' and stages' config classes can
build on it without importing the whole job spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """A spec section: unknown keys are errors (a typo must not fall back to a default silently)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


RESOURCES_HELP = ("custom Ray resources each actor or worker needs, e.g. {synth: 1}: it runs only on nodes that "
                  "advertise them, and an autoscaler adds such nodes (cluster/README.md)")

# How an index is searched: by vectors, by words (BM25), or both fused.
Mode = Literal["dense", "fulltext", "hybrid"]


# Ray's own settings, beside the sections: runtime.py reads them, and must not import the job spec to do so
class RayConfig(Section):
    address: str | None = Field(None, description="null: start an embedded local Ray; 'auto' or ray://host:10001 on a cluster")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded Ray (default: all of this machine's)")
    dashboard_host: str = Field("127.0.0.1", description="where the embedded Ray's dashboard listens")
    parquet_reader: Literal["v1", "v2"] = Field("v1", description="Ray Data's Parquet reader. v2 (Ray's default) "
                                                "starts a pool of footer-reading actors for every read: 3-5 s a read "
                                                "on 2 cores, whatever its size; v1 lists files in tasks")
    read_blocks: int | None = Field(None, ge=1, description="read tasks a read is split into at least (Ray Data's "
                                    "read_op_min_num_blocks, 200 by default); default: twice the cluster's CPUs, at "
                                    "least 4. A read of many small files (a corpus update's parts) is then a few "
                                    "tasks, not one per file")


def resolve_input(section: BaseModel, field: str, spec_dir: Path) -> Path | None:
    """`section.field`, an input path, read from the current directory, then from the spec's folder, and made
    absolute in place; None (the field left as it was) when it is in neither."""
    value = getattr(section, field)
    p = Path(value).expanduser()
    found = (p if p.exists() else None) if p.is_absolute() else \
        next(((base / p).resolve() for base in (Path.cwd(), spec_dir) if (base / p).exists()), None)
    if found is not None:
        setattr(section, field, str(found))
    return found

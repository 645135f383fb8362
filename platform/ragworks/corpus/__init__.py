"""Corpus processing: raw records to clean, deduplicated, token-aware chunks."""

from pydantic import BaseModel

from ..config import CorpusConfig
from ..stage import Outputs, StageDef


class CorpusDelta(BaseModel):
    """What one run changed against the run before (`base`, its run id): `chunks` holds the chunks of the
    documents to upsert, `replaced` every document id whose chunks an index built from `base` must drop
    first; `counts` are the documents of the touched files by status, and the documents to upsert / drop."""

    base: str
    chunks: str
    replaced: str
    files_read: int
    files_removed: int
    counts: dict[str, int] = {}


class CorpusOutputs(Outputs):
    """Every input record lands in exactly one folder: input = documents + duplicates + rejects. `records`
    (every decided record with its keys) and `files` (each source file's fingerprint) are what the next run
    compares with; `delta`, what this run changed against the last one, when it was an update."""

    chunks: str
    duplicates: str
    rejects: str
    records: str = ""
    files: dict[str, str] = {}
    source_root: str = ""
    delta: CorpusDelta | None = None


STAGES = (
    StageDef("corpus", CorpusConfig, "ragworks.corpus.corpus:run", CorpusOutputs,
             external="ragworks.corpus.corpus:external_inputs", work=("chunks", "chunks"), resumable=True,
             incremental=True,
             help="read, normalise, dedup (exact + MinHash) and chunk the source; rejects kept aside; "
                  "resumable (each dedup pass is kept on disk until the stage ends); a changed source is an "
                  "update (only the changed files read, only the changed documents chunked)"),
)

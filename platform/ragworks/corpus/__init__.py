"""Corpus processing: raw records to clean, deduplicated, token-aware chunks."""

from ..config import CorpusConfig
from ..stage import Outputs, StageDef


class CorpusOutputs(Outputs):
    """Every input record lands in exactly one folder: input = documents + duplicates + rejects."""

    chunks: str
    duplicates: str
    rejects: str


STAGES = (
    StageDef("corpus", CorpusConfig, "ragworks.corpus.corpus:run", CorpusOutputs,
             external="ragworks.corpus.corpus:external_inputs", work=("chunks", "chunks"), resumable=True,
             help="read, normalise, dedup (exact + MinHash) and chunk the source; rejects kept aside; "
                  "resumable (each dedup pass is kept on disk until the stage ends)"),
)

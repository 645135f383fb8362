"""Corpus processing: raw records to clean, deduplicated, token-aware chunks."""

from pydantic import BaseModel

from ..stage import Outputs, StageDef
from .config import CorpusConfig


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

    def replaced_ids(self):
        """Every document id whose chunks the update replaces, as an Arrow array: a delta's ids, not the corpus's
        (one small file the corpus stage wrote)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..storage import Folder

        files = Folder(self.replaced).files(".parquet")
        tables = [pq.read_table(f.path, filesystem=f.fs, columns=["doc_id"]) for f in files]
        return pa.concat_tables(tables)["doc_id"].combine_chunks() if tables else pa.array([], pa.string())


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
    parted: bool = False  # every output folder in parts, one per source file (`parts.py`): what an update links
    ledger: str = ""  # every document's dedup keys and decision, looked up by key (`ledger.py`)
    ledger_version: int | None = None  # the ledger's version this run left: later ones are a killed update's
    delta: CorpusDelta | None = None

    def updates(self, built: dict | None) -> bool:
        """Whether this run's delta applies to what a stage built last (`built`, its manifest): that stage read the
        corpus run the delta was made against."""
        read = ((built or {}).get("inputs") or {}).get("corpus") or {}
        return self.delta is not None and read.get("run_id") == self.delta.base


STAGES = (
    StageDef("corpus", CorpusConfig, "ragworks.corpus.corpus:run", CorpusOutputs,
             external="ragworks.corpus.corpus:external_inputs", work=("chunks", "chunks"), resumable=True,
             incremental=True, check="ragworks.corpus.config:check", paths=("source.path",),
             help="read, normalise, dedup (exact + MinHash) and chunk the source; rejects kept aside; "
                  "resumable (each dedup pass is kept on disk until the stage ends); a changed source is an "
                  "update (only the changed files read, only the changed documents chunked)"),
)

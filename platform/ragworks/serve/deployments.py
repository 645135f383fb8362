"""The deployments behind the ingress: each loads its model or table once per replica.

Embedder and retriever follow the job's workdir: when a job writes a new index
(its manifest changes), the next request after `reload_s` re-opens the table at
the version the manifest names and, if the index was built with another
embedder, loads that one, so a re-indexed or updated corpus goes live without
restarting the application. A corpus update writes its versions into the same
table while replicas search the version their manifest named; the manifest is
written last, so no replica ever searches an update half-applied.
"""

from __future__ import annotations

import time

import numpy as np
from pyarrow.fs import FileType
from ray import serve

from ..manifest import MANIFEST
from ..runtime import limit_torch_threads
from ..storage import Folder


def served_index(workdir: Folder) -> tuple[Folder, str]:
    """(index folder, why): the ship gate's choice when the job ran one, else the tuned index when the job made
    it, else the base one (the registry's products: `stage.product`)."""
    from ..stage import product

    choice = product(workdir, "ship_choice")
    if choice is not None:
        return workdir / choice[1].serve, f"the ship gate's choice: {choice[1].reason()}"
    for name, why in (("tuned_index", "the tuned index (no ship gate ran)"), ("index", "the job's only index")):
        found = product(workdir, name)
        if found is not None:
            return found[0], why
    raise FileNotFoundError(f"{workdir}: no finished index (run a job with an index stage first)")


class IndexWatch:
    """The workdir's served index (`served_index`) and whether it changed."""

    def __init__(self, workdir: str, reload_s: float):
        self.workdir, self.reload_s = Folder(workdir), reload_s
        self.checked, self.stamp = 0.0, None
        self.changed()

    @property
    def index_dir(self) -> Folder:
        return served_index(self.workdir)[0]

    def changed(self) -> bool:
        now = time.monotonic()
        if self.stamp is not None and now - self.checked < self.reload_s:
            return False
        self.checked = now
        manifest = self.index_dir / MANIFEST
        info = manifest.fs.get_file_info(manifest.path)
        if info.type == FileType.NotFound:
            raise FileNotFoundError(f"{self.workdir}: no finished index (run a job with an index stage first)")
        stamp = (str(manifest), info.mtime_ns)
        changed, self.stamp = stamp != self.stamp, stamp
        return changed


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16})
class Embedder:
    """Query embeddings, batched across concurrent requests by Serve."""

    def __init__(self, workdir: str, reload_s: float = 2.0):
        limit_torch_threads()
        self.watch = IndexWatch(workdir, reload_s)
        self.name, self.model = None, None
        self._load()

    def _load(self) -> None:
        from ..index import IndexOutputs
        from ..index.embed import load_embedder
        from ..manifest import read_manifest

        name = IndexOutputs.from_manifest(read_manifest(self.watch.index_dir)).embedder
        if name != self.name:
            self.model, self.name = load_embedder(name), name

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def embed(self, texts: list[str]) -> list[np.ndarray]:
        if self.watch.changed():
            self._load()
        vectors = self.model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
        return list(vectors.astype(np.float32))

    def model_name(self) -> str:
        return self.name


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8})
class Retriever:
    """Dense, full-text and hybrid search over the job's LanceDB table."""

    def __init__(self, workdir: str, reload_s: float = 2.0, rerank: dict | None = None):
        from .metrics import IndexMetrics

        self.watch = IndexWatch(workdir, reload_s)
        self.metrics = IndexMetrics()
        self.reranker = None
        if rerank is not None:  # a cross-encoder loaded once per replica, torch on this replica's CPUs
            from ..index.config import RerankConfig
            from ..index.rerank import Reranker

            self.reranker = Reranker(RerankConfig(**rerank["config"]), rerank["model"])
        self._open()

    def _open(self) -> None:
        from ..index import open_index

        self.searcher = open_index(self.watch.index_dir)
        self.version = self.searcher.table.version
        self.metrics.record(self.version, self.searcher.rows)

    def search(self, query: str, vector: np.ndarray | None, mode: str, k: int, rerank: bool = False) -> list[dict]:
        if self.watch.changed():
            self._open()
        hits = self.searcher.search(query, mode=mode, k=k, vector=vector, reranker=self.reranker if rerank else None)
        return [{**h, "score": float(h["score"]),
                 **({"retrieval_score": float(h["retrieval_score"])} if "retrieval_score" in h else {})} for h in hits]

    def chunk(self, chunk_id: str) -> dict | None:
        if self.watch.changed():
            self._open()
        return self.searcher.chunk(chunk_id)

    def info(self) -> dict:
        if self.watch.changed():
            self._open()
        return {"index": str(self.watch.index_dir), "table_version": self.version, "rows": self.searcher.rows,
                "reranker": self.reranker.model_path if self.reranker else None}


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=4,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 2})
class Generator:
    """Answers from the retrieved chunks through any engine (`ragworks.engines`): a local causal LM with the
    trained LoRA adapter merged in, or an OpenAI-compatible endpoint. The engine arrives as a plain dict, which
    Serve can ship to replicas and a serve config can write."""

    def __init__(self, engine: dict, batch: dict | None = None):
        from ..engines import chat_engine, engine_config
        from ..engines.batching import Batcher
        from .metrics import report_generator

        cfg = engine_config(engine)
        self.name, self.kind = cfg.model, cfg.kind
        self.engine = chat_engine(cfg)  # a local model limits torch to this replica's CPUs as it loads
        self.batcher = Batcher(self.engine, **(batch or {}))
        report_generator(self.batcher.stats)

    async def complete(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                       stop: list[str] | None = None) -> dict:
        return await self.batcher.complete(messages, max_tokens, temperature, top_p, stop)

    async def stream(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                     stop: list[str] | None = None):
        """Text pieces as the model writes them, then the counts (a Serve streaming method). A cancelled call
        (its client gone) stops its generation at the next step (`batching.Batcher`)."""
        async for piece in self.batcher.stream(messages, max_tokens, temperature, top_p, stop):
            yield piece

    def stats(self) -> dict:
        """Tokens generated on this replica since it started, and the requests generating and waiting."""
        return self.batcher.stats()

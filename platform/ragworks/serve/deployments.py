"""The deployments behind the ingress: each loads its model or table once per replica.

Embedder and retriever follow the job's workdir: when a job writes a new index
(its manifest changes), the next request after `reload_s` re-opens the table and,
if the index was built with another embedder, loads that one, so a re-indexed
corpus goes live without restarting the application.
"""

from __future__ import annotations

import time
from threading import Thread

import numpy as np
from pyarrow.fs import FileType
from ray import serve

from ..manifest import MANIFEST
from ..runtime import limit_torch_threads
from ..storage import Folder


class IndexWatch:
    """The workdir's current index (the tuned one when the job made it) and whether it changed."""

    def __init__(self, workdir: str, reload_s: float):
        self.workdir, self.reload_s = Folder(workdir), reload_s
        self.checked, self.stamp = 0.0, None
        self.changed()

    @property
    def index_dir(self) -> Folder:
        tuned = self.workdir / "index_tuned"
        return tuned if (tuned / MANIFEST).exists() else self.workdir / "index"

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
        from ..index.embed import load_embedder
        from ..manifest import read_manifest

        name = read_manifest(self.watch.index_dir)["embedder"]
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

    def __init__(self, workdir: str, reload_s: float = 2.0):
        self.watch = IndexWatch(workdir, reload_s)
        self._open()

    def _open(self) -> None:
        from ..index import open_index

        self.searcher = open_index(self.watch.index_dir)
        self.version = self.searcher.table.version

    def search(self, query: str, vector: np.ndarray | None, mode: str, k: int) -> list[dict]:
        if self.watch.changed():
            self._open()
        hits = self.searcher.search(query, mode=mode, k=k, vector=vector)
        return [{**h, "score": float(h["score"])} for h in hits]

    def info(self) -> dict:
        return {"index": str(self.watch.index_dir), "table_version": self.version, "rows": self.searcher.table.count_rows()}


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=4,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 2})
class Generator:
    """A causal LM (transformers engine) answering from the retrieved chunks; a trained LoRA adapter merged in."""

    def __init__(self, model: str, adapter: str | None = None):
        from ..models import load_causal_lm

        limit_torch_threads()
        self.name, self.adapter = model, adapter
        self.model, self.tok = load_causal_lm(model, adapter=adapter)

    def _inputs(self, messages: list[dict]):
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tok(text, return_tensors="pt", return_token_type_ids=False)

    def _kwargs(self, max_tokens: int, temperature: float, top_p: float) -> dict:
        kwargs = {"max_new_tokens": max_tokens, "pad_token_id": self.tok.pad_token_id, "do_sample": temperature > 0}
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=top_p)
        return kwargs

    def complete(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0) -> dict:
        import torch

        inputs = self._inputs(messages)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self._kwargs(max_tokens, temperature, top_p))
        new = out[0, inputs["input_ids"].shape[1]:]
        text = self.tok.decode(new, skip_special_tokens=True)
        finish = "length" if len(new) >= max_tokens else "stop"
        return {"text": text.strip(), "prompt_tokens": int(inputs["input_ids"].shape[1]),
                "completion_tokens": int(len(new)), "finish_reason": finish}

    def stream(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0):
        """Text pieces as the model writes them (a Serve streaming method)."""
        from transformers import TextIteratorStreamer

        inputs = self._inputs(messages)
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        worker = Thread(target=self.model.generate, kwargs={**inputs, **self._kwargs(max_tokens, temperature, top_p),
                                                            "streamer": streamer})
        worker.start()
        yield from (piece for piece in streamer if piece)
        worker.join()

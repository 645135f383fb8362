"""Embedding inside a Ray Data actor pool: the model loads once per actor."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..models import resolve_embedder
from ..runtime import assigned_cpus, limit_torch_threads, torch_device


def load_embedder(name: str, num_gpus: float = 0.0):
    """A model with sentence-transformers' `encode`. A static model (`index.embedder: static`, or any model2vec
    folder) loads with model2vec instead, which needs neither torch nor transformers: about a second and 130 MB
    instead of ten seconds and 600 MB on 2 busy cores (sentence-transformers' import), and it embeds as fast."""
    path = resolve_embedder(name)
    if is_static(path):
        os.environ["RAYON_NUM_THREADS"] = str(assigned_cpus())  # its tokenizer's threads; no torch to limit
        from model2vec import StaticModel

        return StaticModel.from_pretrained(path, quantize_to="float32")  # numpy averages float16 a third slower
    limit_torch_threads()  # here, not in every caller: importing torch for a static model costs seconds an actor
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=torch_device(num_gpus))


def is_static(path: str) -> bool:
    """model2vec's folders say so in config.json, where a transformer names its architecture."""
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "model2vec"


def vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """LanceDB searches FixedSizeList<float32> columns; Ray's tensor type is not one."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


class Embed:
    """Ray Data callable class: adds a `vector` column computed from `text`."""

    def __init__(self, model: str, batch_size: int, num_gpus: float = 0.0):
        self.model = load_embedder(model, num_gpus)
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.model.encode(batch["text"].to_pylist(), batch_size=self.batch_size,
                                    convert_to_numpy=True, show_progress_bar=False)
        return batch.append_column("vector", vector_array(vectors))

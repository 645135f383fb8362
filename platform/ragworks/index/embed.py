"""Embedding inside a Ray Data actor pool: the model loads once per actor."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..models import resolve_embedder
from ..runtime import limit_torch_threads, torch_device


def load_embedder(name: str, num_gpus: float = 0.0):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_embedder(name), device=torch_device(num_gpus))


def vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """LanceDB searches FixedSizeList<float32> columns; Ray's tensor type is not one."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


class Embed:
    """Ray Data callable class: adds a `vector` column computed from `text`."""

    def __init__(self, model: str, batch_size: int, num_gpus: float = 0.0):
        limit_torch_threads()
        self.model = load_embedder(model, num_gpus)
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.model.encode(batch["text"].to_pylist(), batch_size=self.batch_size,
                                    convert_to_numpy=True, show_progress_bar=False)
        return batch.append_column("vector", vector_array(vectors))

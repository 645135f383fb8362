"""The static embedder: distilled once from the bundled MiniLM with model2vec, cached per machine, and selectable
as `index.embedder: static` (the index stage, search and serving all load it through `load_embedder`)."""

from __future__ import annotations

import numpy as np
from conftest import QUERIES
from rich.console import Console

from ragworks.config import parse_spec
from ragworks.index import open_index
from ragworks.index.embed import load_embedder
from ragworks.models import DEFAULT_EMBEDDER, resolve_embedder
from ragworks.runner import run_job

QUIET = Console(quiet=True)


def test_static_embedder_is_distilled_once_and_loads_with_either_library():
    from sentence_transformers import SentenceTransformer

    path = resolve_embedder("static")  # distils on a fresh machine (about a minute on 2 cores), else the cache
    assert resolve_embedder("static") == path
    texts = ["how do plants make glucose from sunlight", "Plants convert sunlight and water into glucose",
             "Magma erupts as lava from a volcano"]
    model = load_embedder("static")  # model2vec's StaticModel, as the embedding actors load it
    vectors = model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
    assert vectors.shape == (3, 256) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    same = SentenceTransformer(path, device="cpu").encode(texts, convert_to_numpy=True)  # its StaticEmbedding
    assert np.allclose(same.astype(np.float32), vectors, atol=1e-3)


def test_the_index_stage_embeds_with_the_static_model_and_dense_search_finds_each_document(ray_local, tmp_path,
                                                                                         beir_dir):
    spec = parse_spec({"corpus": {"source": {"path": str(beir_dir)}},
                       "index": {"embedder": "static", "concurrency": [1, 1], "fulltext": False}})
    assert spec.corpus.chunking.tokenizer_model == DEFAULT_EMBEDDER  # chunks are measured in its teacher's tokens
    run_job(spec, workdir=tmp_path / "wd", console=QUIET)

    searcher = open_index(tmp_path / "wd" / "index")
    assert searcher.embedder_name == "static"
    assert searcher.table.schema.field("vector").type.list_size == 256
    for _, query, relevant in QUERIES:
        assert searcher.search(query, mode="dense", k=1)[0]["doc_id"] in relevant, query

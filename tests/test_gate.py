"""Issue 20: a reranker trained on the synthetic pairs, used as the retriever's teacher (GPL, MarginMSE) and in
evaluate; the ship gate, which serves base when the tuned retriever is worse; the whole chain following a small
corpus update (issue 33)."""

import io
import json

import torch
from conftest import FACTS, train_job
from fake_llm import FakeLLM
from rich.console import Console
from test_delta import corpus_chunks, table_rows

from ragworks.config import parse_spec
from ragworks.runner import run_job
from ragworks.storage import Folder
from ragworks.train.steps import progress_file

QUIET = Console(quiet=True)


def damage(model_dir: str, scale: float = 0.5) -> None:
    """Noise in every weight of a sentence-transformers folder: a tuned model that is plainly worse."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    model.save(model_dir)


def test_reranker_teaches_the_retriever_evaluate_reranks_and_the_gate_serves_base_when_tuned_is_worse(
        ray_local, facts_qrels, tiny_cross_encoder, tmp_path):
    from sentence_transformers import CrossEncoder

    from ragworks.serve.deployments import served_index

    workdir = tmp_path / "wd"
    with FakeLLM(echo_words=8) as llm:
        data = train_job(facts_qrels, llm.url, max_steps=3, teacher="reranker", loss="both")
        data["train_reranker"] = {"model": tiny_cross_encoder, "batch_size": 4, "max_steps": 3, "max_length": 64,
                                  "learning_rate": 1e-3, "validation_fraction": 0.2, "workers": 1, "cpus_per_worker": 1}
        data["evaluate"].update(rerank={"model": "reranker", "top_k": 3}, rerank_modes=["fulltext", "dense"])
        data["gate"] = {"modes": ["dense", "hybrid"]}
        spec = parse_spec(data)
        m = run_job(spec, workdir=workdir, console=QUIET)

        # The reranker: trained from the tiny cross-encoder, its weights moved, loadable as a CrossEncoder.
        r = m["train_reranker"]["outputs"]
        assert r["counts"]["steps"] == 3 and r["best"]["step"] in {h["step"] for h in r["history"]}
        trained, start = CrossEncoder(r["model"]), CrossEncoder(tiny_cross_encoder)
        pair = [(FACTS[0][1], FACTS[1][1])]
        assert abs(float(trained.predict(pair)[0]) - float(start.predict(pair)[0])) > 1e-6 or r["best"]["step"] == 0

        # The retriever learnt from the reranker's margins and the contrastive loss, three steps.
        t = m["train_retriever"]["outputs"]
        assert t["teacher"] == r["model"] and t["counts"]["steps"] == 3
        steps = [json.loads(x) for x in progress_file(Folder(str(workdir)) / "train_retriever").read_text().splitlines()]
        losses = [x["loss"] for x in steps if "loss" in x]
        assert len(losses) == 3 and all(x == x and x > 0 for x in losses)

        # evaluate re-ranks every mode's top 3 with the trained reranker: it only re-orders them, so a
        # document found within the first 100 is still found.
        metrics = m["evaluate"]["outputs"]["metrics"]
        assert {"fulltext + rerank", "dense (tuned) + rerank", "dense (base) + rerank"} <= set(metrics)
        for label in ("fulltext", "dense (base)", "dense (tuned)"):
            assert metrics[label + " + rerank"]["recall@100"] == metrics[label]["recall@100"]

        # The gate scored both indexes on the held-out queries in both gated modes.
        g = m["gate"]["outputs"]
        assert g["decided_on"] == "heldout" and set(g["gains"]) == {"dense", "hybrid"}
        assert set(g["scores"]["heldout"]) == {"dense (base)", "dense (tuned)", "hybrid (base)", "hybrid (tuned)"}
        assert g["counts"]["heldout_queries"] == m["train_retriever"]["outputs"]["counts"]["val_pairs"] >= 1

        # One document of twelve changes. The chain follows the delta: queries for its chunks only, every trainer
        # keeps its model (8% < retrain_after 10%), both indexes are updated in place, and the gate decides again.
        docs = [json.loads(line) for line in (facts_qrels / "corpus.jsonl").read_text().splitlines()]
        docs[5]["text"] = "Tides rise and fall twice a day as the moon pulls on the oceans of the earth"
        (facts_qrels / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        prompts, out = llm.requests, io.StringIO()
        updated = run_job(spec, workdir=workdir, console=Console(file=out, width=200))
        log, asked = out.getvalue(), llm.requests - prompts
        chunks = corpus_chunks(updated["corpus"])  # (id, doc_id, chunk_hash, doc_hash)
        tide = [c for c in chunks if c[1] == "tide"]
        assert "0 added, 1 changed, 0 deleted, 11 unchanged" in log, log
        assert 0 < asked <= len(tide), (asked, len(tide))  # queries for the changed document's chunks only
        assert updated["synthesize"]["outputs"]["counts"]["ok"] == len(chunks)
        assert log.count("keeping the last model") == 2, log  # train_reranker and train_retriever
        assert updated["train_retriever"]["outputs"]["model"] == t["model"]
        assert updated["train_reranker"]["outputs"]["model"] == r["model"]
        assert log.count("updating the index in place") == 2, log  # index and index_tuned
        assert table_rows(updated["index_tuned"]) == table_rows(updated["index"])
        assert updated["gate"]["run_id"] != m["gate"]["run_id"]  # it decided again, on the updated indexes

        # A tuned model that is worse: re-index with it; the gate must serve base.
        damage(t["model"])
        again = run_job(spec, workdir=workdir, console=QUIET, force=["index_tuned"])
    g = again["gate"]["outputs"]
    assert g["gains"]["dense"] < 0, g
    assert g["winner"] == "base" and g["serve"] == "index" and not g["forced"]
    index, why = served_index(Folder(str(workdir)))
    assert str(index) == str(Folder(str(workdir)) / "index") and "ship gate" in why
    report = Folder(again["evaluate"]["outputs"]["markdown"]).read_text()
    assert "## Ship gate" in report and "Served: the base index" in report

"""Retriever fine-tuning on Ray Train: the stage, re-indexing with the tuned model (in an S3 workdir), a killed
worker."""

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from conftest import FACTS, S3_BUCKET, s3_keys, train_job
from fake_llm import FakeLLM
from rich.console import Console

from ragworks.config import parse_spec
from ragworks.models import cache_dir
from ragworks.runner import run_job
from ragworks.storage import Folder, fetch

QUIET = Console(quiet=True)


def test_train_reindex_and_report_base_vs_tuned_in_an_s3_workdir(ray_local, s3, facts_qrels):
    """The whole chain with its workdir in S3 (127.0.0.1): Ray Train checkpoints there, the tuned model is
    uploaded and fetched by the re-indexing actors, and a second run skips every stage from the manifests."""
    workdir = f"s3://{S3_BUCKET}/train-reindex"
    fetched_before = set(cache_dir().glob("fetched/*"))
    with FakeLLM(echo_words=8) as llm:
        spec = parse_spec(train_job(facts_qrels, llm.url, epochs=2, select_on="dev",
                                    dev={"dataset": str(facts_qrels), "split": "test", "max_corpus": 8}))
        m = run_job(spec, workdir=workdir, console=QUIET)
        requests = llm.requests
        again = run_job(spec, workdir=workdir, console=QUIET)
    assert {k: v["run_id"] for k, v in again.items()} == {k: v["run_id"] for k, v in m.items()}  # all skipped
    assert llm.requests == requests
    t = m["train_retriever"]
    assert t["counts"]["train_pairs"] >= 8 and t["counts"]["val_pairs"] >= 1
    steps_per_epoch = t["counts"]["train_pairs"] // 4
    assert t["counts"]["steps"] == 2 * steps_per_epoch
    assert [h["step"] for h in t["history"]] == [0, steps_per_epoch, 2 * steps_per_epoch]  # base, then every epoch
    assert t["best"]["step"] in {h["step"] for h in t["history"]}
    assert all(h["val_queries"] >= 1 and h["dev_queries"] == len(FACTS) for h in t["history"])
    assert all(h["dev_pool"] == len(FACTS) for h in t["history"])  # every judged document, over max_corpus
    assert t["selected_on"] == "dev_ndcg@10"
    assert t["best"]["dev_ndcg@10"] == max(h["dev_ndcg@10"] for h in t["history"])
    assert t["throughput"]["pairs_per_s"] > 0

    from sentence_transformers import SentenceTransformer

    assert t["outputs"]["model"] == f"{workdir}/train_retriever/model"
    tuned = SentenceTransformer(fetch(t["outputs"]["model"]))  # sentence-transformers format
    assert tuned.encode(["a query"]).shape == (1, 384)

    assert m["index"]["embedder"] == "base" and m["index_tuned"]["embedder"] == t["outputs"]["model"]
    assert m["index_tuned"]["counts"]["rows"] == m["index"]["counts"]["rows"]
    assert set(m["evaluate"]["metrics"]) == {"fulltext", "dense (base)", "dense (tuned)"}
    report = json.loads(Folder(m["evaluate"]["outputs"]["json"]).read_text())
    stages = {r["stage"]: r for r in report["stages"]}
    assert {"train_retriever", "index_tuned"} <= set(stages)
    trained = t["counts"]["steps"] * t["config"]["batch_size"]
    assert stages["train_retriever"]["work"] == trained and stages["train_retriever"]["unit"] == "pairs"
    assert stages["index_tuned"]["work"] == m["index"]["counts"]["rows"] and stages["index_tuned"]["per_s"] > 0
    assert "dense (tuned)" in Folder(m["evaluate"]["outputs"]["markdown"]).read_text()

    stored = s3_keys("train-reindex/")
    assert all(f"train-reindex/{stage}/manifest.json" in stored for stage in m)
    assert not [k for k in stored if k.endswith("_in_progress.json")]
    assert any(k.startswith("train-reindex/train_retriever/ray_train/") for k in stored)  # Ray Train's checkpoints
    assert any(k.startswith("train-reindex/index_tuned/lancedb/chunks.lance/") for k in stored)
    assert "train-reindex/evaluate/report.png" in stored
    for folder in set(cache_dir().glob("fetched/*")) - fetched_before:  # the tuned model, fetched to load it
        shutil.rmtree(folder)


def registered_checkpoint_step(workdir: Path, stage: str = "train_retriever") -> int:
    """The step of the newest checkpoint Ray Train's controller has registered (-1: none yet).

    A worker's report() returns before the controller records the checkpoint, so a kill timed
    by the worker's own log alone can land before the checkpoint counts (seen on a loaded CI).
    """
    for snap in (workdir / stage / "ray_train").glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snap.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):  # being rewritten
            return -1
        return int(latest.get("metrics", {}).get("step", -1))
    return -1


def worker_killer(workdir: Path, stage: str) -> tuple[threading.Thread, dict]:
    """A thread that SIGKILLs the rank-1 worker once Ray Train holds a checkpoint past the base one and the
    worker went on; `killed` gets the step it was at and the checkpoint's step."""
    progress = workdir / stage / "progress.jsonl"
    killed: dict = {}

    def killer():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            saved = registered_checkpoint_step(workdir, stage)
            lines = [json.loads(x) for x in progress.read_text().splitlines()] if progress.exists() else []
            steps = [x for x in lines if x.get("rank") == 1 and x.get("step", 0) > max(saved, 2) and "loss" in x]
            if saved >= 2 and steps:
                killed.update(steps[-1], checkpoint=saved)
                os.kill(steps[-1]["pid"], signal.SIGKILL)
            time.sleep(0.02)

    return threading.Thread(target=killer, daemon=True), killed


def test_a_killed_lora_worker_resumes_from_its_checkpoint_and_exports_merged_weights(ray_local, tmp_path, facts_dir):
    """Two workers (gloo, negatives gathered across them) training LoRA adapters; one is SIGKILLed after the
    first checkpoint. The run resumes from it, and the exported model has the adapters merged in."""
    from sentence_transformers import SentenceTransformer

    from ragworks.models import resolve_embedder

    workdir = tmp_path / "wd"
    thread, killed = worker_killer(workdir, "train_retriever")
    with FakeLLM(echo_words=8) as llm:
        spec = parse_spec(train_job(facts_dir, llm.url, evaluate=False, epochs=3, checkpoint_every=2, workers=2,
                                    cpus_per_worker=0.5, batch_size=4, learning_rate=1e-3,
                                    lora={"r": 4, "alpha": 8, "dropout": 0.0}))
        thread.start()
        ms = run_job(spec, workdir=workdir, console=QUIET)
    m = ms["train_retriever"]
    thread.join(timeout=5)
    assert killed, "the worker was never killed"
    steps_per_epoch = m["counts"]["train_pairs"] // 4
    assert m["counts"]["steps"] == 3 * steps_per_epoch  # finished every step after the restart
    assert m["resumed_from_steps"] and killed["checkpoint"] <= m["resumed_from_steps"][0] <= killed["step"]
    assert m["resumed_from_steps"][0] % 2 == 0  # from a checkpoint, not from scratch

    exported = Path(m["outputs"]["model"])
    runs = workdir / "train_retriever" / "ray_train" / "train"
    last = max(d for d in runs.glob("checkpoint_*") if d.is_dir()) / "model"  # named by time: the last step
    base = SentenceTransformer(resolve_embedder("base"))
    texts = [FACTS[0][1], "how do plants make sugar"]
    for folder in (exported, last):
        assert not (folder / "adapter_config.json").exists()  # merged: loads without peft
        assert type(SentenceTransformer(str(folder))[0].model) is type(base[0].model)
    assert abs(SentenceTransformer(str(last)).encode(texts) - base.encode(texts)).max() > 1e-4  # the adapters learnt
    assert ms["index_tuned"]["counts"]["rows"] == ms["index"]["counts"]["rows"]


def test_training_workers_never_ask_for_more_cpus_than_one_node_has():
    from ragworks.train.steps import share_cpus

    assert share_cpus(1, [1.0, 1.0, 1.0]) == 1.0  # cluster/local.sh's nodes: 2.5 CPUs would wait forever
    assert share_cpus(2, [2.0, 2.0, 2.0]) == 2.0
    assert share_cpus(1, [4.0]) == 3.5  # one machine: all but half a CPU for the data tasks
    assert share_cpus(2, [4.0]) == 1.75
    assert share_cpus(4, [1.0]) == 0.5


def test_held_out_slice_is_drawn_across_the_files_not_their_first_rows(ray_local):
    import ray

    from ragworks.train.steps import train_and_val

    # as rag_examples writes them: every claim example, then every question example
    rows = [{"key": f"{kind}:{i}", "split": "val" if i % 3 else "train", "kind": kind}
            for kind in ("claim", "question") for i in range(60)]
    ds = ray.data.from_items(rows, override_num_blocks=4)
    train, val = train_and_val(ds, ["key", "kind"], 20, draw_by="key")
    drawn = val.take_all()
    assert len(drawn) == 20 and set(drawn[0]) == {"key", "kind"}
    kinds = [r["kind"] for r in drawn]
    assert 5 <= kinds.count("claim") <= 15, kinds  # the first 20 rows in file order would all be claims
    assert [r["key"] for r in train_and_val(ray.data.from_items(rows[::-1]), ["key", "kind"], 20, "key")[1].take_all()] \
        == [r["key"] for r in drawn]  # the same slice whatever the file order
    assert train.count() == 40

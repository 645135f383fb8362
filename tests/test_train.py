"""Retriever fine-tuning on Ray Train: the stage with LoRA, a killed worker and re-indexing with the tuned model, in
an S3 workdir."""

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
from ragworks.train.steps import progress_file

QUIET = Console(quiet=True)


def test_lora_training_in_an_s3_workdir_resumes_after_a_killed_worker_reindexes_and_reports(ray_local, s3, facts_qrels,
                                                                                           browser, tmp_path):
    """The whole chain with its workdir in S3 (127.0.0.1). Two workers (gloo, negatives gathered across them)
    train LoRA adapters and Ray Train checkpoints to S3; one worker is SIGKILLed after the first checkpoint and
    the run resumes from it. The exported model has the adapters merged in; it is uploaded and fetched by the
    re-indexing actors, the report compares base and tuned, and a second run skips every stage."""
    from sentence_transformers import SentenceTransformer

    from ragworks.models import resolve_embedder

    workdir = f"s3://{S3_BUCKET}/train-reindex"
    fetched_before = set(cache_dir().glob("fetched/*"))
    thread, killed = worker_killer(Folder(workdir), "train_retriever")
    with FakeLLM(echo_words=8) as llm:
        spec = parse_spec(train_job(facts_qrels, llm.url, epochs=3, checkpoint_every=2, workers=2, cpus_per_worker=0.5,
                                    learning_rate=1e-3, lora={"r": 4, "alpha": 8, "dropout": 0.0}, select_on="dev",
                                    dev={"dataset": str(facts_qrels), "split": "test", "max_corpus": 8}))
        thread.start()
        m = run_job(spec, workdir=workdir, console=QUIET)
        requests = llm.requests
        again = run_job(spec, workdir=workdir, console=QUIET)
    thread.join(timeout=5)
    assert {k: v["run_id"] for k, v in again.items()} == {k: v["run_id"] for k, v in m.items()}  # all skipped
    assert llm.requests == requests

    t = m["train_retriever"]
    assert killed, "the worker was never killed"
    assert t["outputs"]["counts"]["train_pairs"] >= 8 and t["outputs"]["counts"]["val_pairs"] >= 1
    per_epoch = t["outputs"]["counts"]["train_pairs"] // 4
    total = 3 * per_epoch
    assert t["outputs"]["counts"]["steps"] == total  # finished every step after the restart
    resumed = t["outputs"]["resumed_from_steps"]
    assert resumed and killed["checkpoint"] <= resumed[0] <= killed["step"]
    checkpointed = {s for s in range(total + 1) if s % 2 == 0 or s % per_epoch == 0}  # every 2 steps, every epoch
    assert resumed[0] in checkpointed  # from a checkpoint, not from scratch
    steps = [h["step"] for h in t["outputs"]["history"]]
    assert steps == sorted(checkpointed)  # the base, then every checkpoint once, across the restart
    assert all(h["val_queries"] >= 1 and h["dev_queries"] == len(FACTS) for h in t["outputs"]["history"])
    assert all(h["dev_pool"] == len(FACTS) for h in t["outputs"]["history"])  # every judged document, over max_corpus
    assert t["outputs"]["selected_on"] == "dev_ndcg@10" and t["outputs"]["best"]["step"] in steps
    assert t["outputs"]["best"]["dev_ndcg@10"] == max(h["dev_ndcg@10"] for h in t["outputs"]["history"])
    assert t["outputs"]["throughput"]["pairs_per_s"] > 0

    assert t["outputs"]["model"] == f"{workdir}/train_retriever/model"
    stored = s3_keys("train-reindex/")
    train_dir = ["train-reindex", "train_retriever", "ray_train", "train"]
    checkpoints = sorted({parts[4] for parts in (k.split("/") for k in stored)  # folders, not the snapshot file
                          if parts[:4] == train_dir and len(parts) > 5 and parts[4].startswith("checkpoint_")})
    assert checkpoints, "no Ray Train checkpoint in S3"
    last = f"{workdir}/train_retriever/ray_train/train/{checkpoints[-1]}/model"  # named by time: the last step
    base = SentenceTransformer(resolve_embedder("base"))
    texts = [FACTS[0][1], "how do plants make sugar"]
    for folder in (fetch(t["outputs"]["model"]), fetch(last)):
        assert not (Path(folder) / "adapter_config.json").exists()  # merged: loads without peft
        model = SentenceTransformer(folder)  # sentence-transformers format
        assert type(model[0].model) is type(base[0].model) and model.encode(["a query"]).shape == (1, 384)
    assert abs(model.encode(texts) - base.encode(texts)).max() > 1e-4  # the last checkpoint's adapters learnt

    assert m["index"]["outputs"]["embedder"] == "base" and m["index_tuned"]["outputs"]["embedder"] == t["outputs"]["model"]
    assert m["index_tuned"]["outputs"]["counts"]["rows"] == m["index"]["outputs"]["counts"]["rows"]
    assert set(m["evaluate"]["outputs"]["metrics"]) == {"fulltext", "dense (base)", "dense (tuned)"}
    report = json.loads(Folder(m["evaluate"]["outputs"]["report"]).read_text())
    stages = {r["stage"]: r for r in report["stages"]}
    assert {"train_retriever", "index_tuned"} <= set(stages)
    assert stages["train_retriever"]["work"] == total * t["config"]["batch_size"]
    assert stages["train_retriever"]["unit"] == "pairs"
    assert stages["index_tuned"]["work"] == m["index"]["outputs"]["counts"]["rows"] and stages["index_tuned"]["per_s"] > 0
    assert "dense (tuned)" in Folder(m["evaluate"]["outputs"]["markdown"]).read_text()

    assert all(f"train-reindex/{stage}/manifest.json" in stored for stage in m)
    assert not [k for k in stored if k.endswith("_in_progress.json")]
    assert any(k.startswith("train-reindex/index_tuned/lancedb/chunks.lance/") for k in stored)
    assert "train-reindex/evaluate/report.png" in stored
    check_report_page(Folder(m["evaluate"]["outputs"]["html"]).read_text(), browser, tmp_path)
    for folder in set(cache_dir().glob("fetched/*")) - fetched_before:  # the models fetched to load them
        shutil.rmtree(folder)


def registered_checkpoint_step(stage_dir: Folder) -> int:
    """The step of the newest checkpoint Ray Train's controller has registered (-1: none yet).

    A worker's report() returns before the controller records the checkpoint, so a kill timed
    by the worker's own log alone can land before the checkpoint counts (seen on a loaded CI).
    """
    for snap in (stage_dir / "ray_train").files("checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snap.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):  # being rewritten
            return -1
        return int(latest.get("metrics", {}).get("step", -1))
    return -1


def worker_killer(workdir: Path | Folder, stage: str) -> tuple[threading.Thread, dict]:
    """A thread that SIGKILLs the rank-1 worker once Ray Train holds a checkpoint past the base one and the
    worker went on; `killed` gets the step it was at and the checkpoint's step. The workdir may be an object
    store: the workers' progress lines are on this node either way."""
    stage_dir = Folder(workdir) / stage
    progress = progress_file(stage_dir)
    killed: dict = {}

    def killer():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            saved = registered_checkpoint_step(stage_dir)
            lines = [json.loads(x) for x in progress.read_text().splitlines()] if progress.exists() else []
            steps = [x for x in lines if x.get("rank") == 1 and x.get("step", 0) > max(saved, 2) and "loss" in x]
            if saved >= 2 and steps:
                killed.update(steps[-1], checkpoint=saved)
                os.kill(steps[-1]["pid"], signal.SIGKILL)
            time.sleep(0.02 if stage_dir.is_local else 0.1)

    return threading.Thread(target=killer, daemon=True), killed


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


def check_report_page(page_html: str, browser, tmp_path) -> None:
    """report.html in Chromium, from disk: every table and chart there, nothing fetched from anywhere."""
    from conftest import screenshot_dir

    local = tmp_path / "report.html"
    local.write_text(page_html)
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    fetched = []
    page.on("request", lambda r: fetched.append(r.url))
    page.goto(local.as_uri())
    assert fetched == [local.as_uri()]  # charts inline, no stylesheet, script or font from a network
    headings = page.locator("h2").all_inner_texts()
    assert headings[:2] == ["Retrieval", "Ship gate"] and headings[2].startswith("Stages:")
    assert headings[3].startswith("Synthetic queries")
    retrieval = page.locator("table").first.inner_text()
    assert "dense (base)" in retrieval and "dense (tuned)" in retrieval and "ndcg@10" in retrieval
    assert page.get_by_text("Served: the ").count() == 1 and "heldout (decides)" in page.locator("table").nth(1).inner_text()
    assert "train_retriever" in page.locator("table").nth(2).inner_text()
    assert page.locator("h3").first.inner_text() == "kept"
    assert page.eval_on_selector("img", "i => i.complete && i.naturalWidth > 400")  # the chart decoded
    page.screenshot(path=f"{screenshot_dir(tmp_path)}/report-page.png", full_page=True)
    page.close()


def test_a_split_coordinator_waiting_on_its_trainer_sleeps_instead_of_spinning(ray_local):
    """Ray Data's loop returns at once when no task runs; Ray Train's split coordinator spun a core beside the
    trainer while its blocks waited for it (the flagship's train_retriever stepped at 45-50 s, not 27-29 s).
    `runtime.IdleBackoff`, which `configure_data` installs, sleeps such a step."""
    import psutil

    rows = [{"id": i} for i in range(4_000)]  # no read task: one would ask for a whole CPU
    ds = ray_local.data.from_items(rows, override_num_blocks=40).map_batches(lambda b: b, num_cpus=0.25)
    # a budget below one task's CPUs, as Ray Train left the flagship's split beside a worker holding 3.5 of 4
    # CPUs (its log: take_split "backpressured: ResourceBudget", alloc cpu=0.0): a task starts only when the
    # consumer waits, and the loop has nothing to wait on in between
    ds.context.execution_options.resource_limits = ray_local.data.ExecutionResources(cpu=0.1)
    [split] = ds.streaming_split(1)
    batches = iter(split.iter_batches(batch_size=10))
    next(batches)  # the coordinator runs; what it made waits for this consumer, as for a trainer mid-step
    coordinator = psutil.Process(ray_local.get(split._coord_actor.__ray_call__.remote(lambda _: os.getpid())))
    time.sleep(2)  # its blocks made, or held back for the consumer
    before, start = sum(coordinator.cpu_times()[:2]), time.monotonic()
    time.sleep(3)
    busy = (sum(coordinator.cpu_times()[:2]) - before) / (time.monotonic() - start)
    assert busy < 0.25, f"the split coordinator used {busy:.0%} of a core while its consumer was busy elsewhere"
    assert sum(len(b["id"]) for b in batches) == 4_000 - 10  # and every row still reaches the consumer

"""A job whose workdir is an object store: S3 as moto serves it on 127.0.0.1 (as MinIO or S3 would).

Ray Data, LanceDB and Ray Train write to the store themselves; manifests, resume markers, reports and
model folders go through `ragworks.storage`. Nothing of the job may land on local disk but caches."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import train_job
from fake_llm import FakeLLM
from moto.server import ThreadedMotoServer

from ragworks.incremental import done_keys, drop_partial_files
from ragworks.storage import Folder, fetch, staged

BUCKET = "ragworks-test"


@pytest.fixture(scope="module")
def s3():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
           "AWS_ALLOW_HTTP": "true"}  # LanceDB's object store refuses plain http without it
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
        yield env
    server.stop()


def keys(prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_folders_resume_markers_and_model_fetch_on_s3(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("RAGWORKS_CACHE", str(tmp_path / "cache"))
    root = Folder(f"s3://{BUCKET}/unit")
    assert not root.is_local and str(root / "a") == f"s3://{BUCKET}/unit/a"
    with pytest.raises(TypeError, match="object store"):
        os.fspath(root)  # a URI handed to a local-only API fails by name, not as a folder "s3:"

    (root / "m" / "manifest.json").write_text('{"key": "k"}')
    assert json.loads((root / "m" / "manifest.json").read_text()) == {"key": "k"} and (root / "m").exists()

    # A resumed stage: whole files give their keys, a half-written one is dropped.
    out = root / "generated"
    for i in range(2):
        pq.write_table(pa.table({"key": [f"k{i}a", f"k{i}b"]}), (out / f"part-{i}.parquet").path, filesystem=out.fs)
    whole = io.BytesIO()
    pq.write_table(pa.table({"key": ["lost"]}), whole)
    with out.fs.open_output_stream((out / "part-9.parquet").path) as f:
        f.write(whole.getvalue()[:-20])
    assert [f.name for f in drop_partial_files(out)] == ["part-9.parquet"]
    assert done_keys(out) == {"k0a", "k0b", "k1a", "k1b"}

    out.move_to(root / "moved")  # no folder rename in an object store: copied, then deleted
    assert not out.exists() and [f.name for f in (root / "moved").files(".parquet")] == ["part-0.parquet", "part-1.parquet"]

    # A model folder: written locally, uploaded, fetched once per change into this node's cache.
    model = root / "model"
    with staged(model) as local:
        (local / "config.json").write_text('{"v": 1}')
        (local / "sub").mkdir()
        (local / "sub" / "w.bin").write_bytes(b"\0" * 10)
    first = fetch(str(model))
    assert json.loads(open(os.path.join(first, "config.json")).read()) == {"v": 1}
    assert os.path.getsize(os.path.join(first, "sub", "w.bin")) == 10
    assert fetch(str(model)) == first
    time.sleep(1.1)  # a re-export: same sizes, a later modification time (object stores keep seconds)
    (model / "config.json").write_text('{"v": 2}')
    second = fetch(str(model))
    assert second != first and json.loads(open(os.path.join(second, "config.json")).read()) == {"v": 2}

    root.remove()
    assert keys("unit/") == []


def test_a_job_with_its_workdir_in_s3_runs_and_skips_from_it(s3, tmp_path, facts_qrels):
    """corpus -> index -> synthesize -> filters -> negatives -> train_retriever (Ray Train storage in S3) ->
    index_tuned (the tuned model fetched from S3) -> evaluate, run by the CLI with an s3:// workdir."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, **s3, "RAGWORKS_CACHE": str(tmp_path / "cache"), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    workdir = f"s3://{BUCKET}/jobs/facts"

    def run() -> str:
        proc = subprocess.run([sys.executable, "-m", "ragworks.cli", "run", str(tmp_path / "job.yaml"),
                               "--workdir", workdir], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    with FakeLLM(echo_words=8) as llm:
        job = {"name": "facts", **train_job(facts_qrels, llm.url, epochs=1)}
        (tmp_path / "job.yaml").write_text(json.dumps(job))
        first = run()
        requests = llm.requests
        second = run()
    stages = ["corpus", "index", "synthesize", "filters", "negatives", "train_retriever", "index_tuned", "evaluate"]
    assert all(f"{s}: done in" in first for s in stages), first[-3000:]
    assert all(f"{s}: up to date, skipped" in second for s in stages), second[-3000:]
    assert llm.requests == requests  # the second run generated nothing

    stored = keys("jobs/facts/")
    for stage in stages:
        assert f"jobs/facts/{stage}/manifest.json" in stored and f"jobs/facts/{stage}/_in_progress.json" not in stored
    assert any(k.startswith("jobs/facts/train_retriever/ray_train/") for k in stored)  # Ray Train's checkpoints
    assert any(k.startswith("jobs/facts/index_tuned/lancedb/chunks.lance/") for k in stored)
    manifest = json.loads(Folder(f"{workdir}/train_retriever/manifest.json").read_text())
    assert manifest["outputs"]["model"] == f"{workdir}/train_retriever/model"
    assert "jobs/facts/train_retriever/model/modules.json" in stored  # sentence-transformers format
    assert json.loads(Folder(f"{workdir}/index_tuned/manifest.json").read_text())["embedder"] == manifest["outputs"]["model"]
    report = json.loads(Folder(f"{workdir}/evaluate/report.json").read_text())
    assert {"fulltext", "dense (base)", "dense (tuned)"} == set(report["metrics"])
    assert {"jobs/facts/evaluate/report.md", "jobs/facts/evaluate/report.png"} <= set(stored)

    assert list(cwd.iterdir()) == []  # nothing of the job on local disk
    assert list((tmp_path / "cache" / "fetched").iterdir())  # the tuned model, fetched to load it

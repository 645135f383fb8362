"""Workdirs in an object store: S3 as moto serves it on 127.0.0.1 (as MinIO or S3 would).

Ray Data, LanceDB and Ray Train write to the store themselves; manifests, resume markers, reports and
model folders go through `ragworks.storage`, tested here. A whole training job in an S3 workdir:
tests/test_train.py."""

from __future__ import annotations

import io
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import S3_BUCKET, s3_keys

from ragworks.incremental import attempt_folder, commit, drop_partial_files, not_written, read_columns, write_block
from ragworks.storage import Folder, fetch, staged


def test_folders_resume_markers_and_model_fetch_on_s3(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("RAGWORKS_CACHE", str(tmp_path / "cache"))
    root = Folder(f"s3://{S3_BUCKET}/unit")
    assert not root.is_local and str(root / "a") == f"s3://{S3_BUCKET}/unit/a"
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
    assert sorted(k for _, t in read_columns(out, ["key"]) for k in t["key"].to_pylist()) == ["k0a", "k0b", "k1a", "k1b"]

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
    assert s3_keys("unit/") == []


@pytest.mark.parametrize("one_task_rows", [200_000, 0], ids=["keys in one task", "hash shuffle"])
def test_attempts_commit_one_row_per_key_and_a_late_write_never_reaches_the_output(ray_local, s3, monkeypatch,
                                                                                  one_task_rows):
    """A killed run's worker wrote a block after the resumed run listed what was written: both attempts
    hold its keys. The commit keeps the earlier attempt's copies, once each, and moves only what it listed;
    the same whether the keys fit one task or go through a shuffle."""
    import ray

    from ragworks import ordering

    monkeypatch.setattr(ordering, "ONE_TASK_ROWS", one_task_rows)
    stage = Folder(f"s3://{S3_BUCKET}/commit-{one_task_rows}")
    first, second = attempt_folder(stage), attempt_folder(stage)
    assert first.name < second.name  # attempts sort by start time

    def put(folder, name, keys, run):
        table = pa.table({"key": keys, "run": [run] * len(keys)})
        pq.write_table(table, (folder / "status=ok" / name).path, filesystem=folder.fs)

    put(first, "a.parquet", ["k0", "k1"], "first")
    put(first, "late.parquet", ["k2", "k3"], "first")  # the dead run's late block
    put(second, "b.parquet", ["k2", "k3", "k4"], "second")  # the resumed run made k2, k3 again
    wanted = ray.data.from_items([{"key": f"k{i}"} for i in range(6)])
    assert sorted(r["key"] for r in not_written(wanted, stage / "_attempts").take_all()) == ["k5"]

    out = stage / "generated"
    assert commit(stage / "_attempts", out) == 2
    rows = [r for _, t in read_columns(out, ["key", "run"]) for r in t.to_pylist()]
    assert sorted(r["key"] for r in rows) == ["k0", "k1", "k2", "k3", "k4"]  # every key exactly once
    assert {r["key"]: r["run"] for r in rows}["k2"] == "first"  # the earliest attempt's copy
    assert all("/status=ok/" in str(f) for f in out.files(".parquet"))
    put(first, "later.parquet", ["k0"], "first")  # a write after the commit: not in the output
    assert sorted(k for _, t in read_columns(out, ["key"]) for k in t["key"].to_pylist()) == ["k0", "k1", "k2", "k3", "k4"]


def test_a_block_is_written_whole_once_per_status_under_a_name_its_keys_decide(tmp_path):
    """What an engine actor writes per generated block: a rewrite of the same block (a dead run's late write,
    a retried task) lands on the same file, so it can never add a second copy."""
    block = pa.table({"key": ["c:1", "c:0", "d:0"], "status": ["ok", "reject", "ok"], "query": ["q1", None, "q2"]})
    summary = write_block(block, tmp_path)
    assert summary.num_rows == 3 and summary.nbytes == 0  # a row per row written, and no data
    first = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    files = [p for p in first if p.endswith(".parquet")]
    assert len(first) == 4 and [f.split("/")[0] for f in files] == ["status=ok", "status=reject"]
    assert [pq.read_table(tmp_path / f)["key"].to_pylist() for f in files] == [["c:1", "d:0"], ["c:0"]]
    assert "status" not in pq.read_table(next(tmp_path.rglob("*.parquet"))).column_names  # the folder names it
    write_block(block.take([2, 0, 1]), tmp_path)  # the same keys in another order: the same files, replaced
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == first
    write_block(block.slice(0, 2), tmp_path)  # another block: another name
    assert len(list(tmp_path.rglob("*.parquet"))) == 4
    assert write_block(block.slice(0, 0), tmp_path).num_rows == 0

"""corpus -> index -> evaluate on real Ray and a real LanceDB folder; resume and search."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from ragworks.config import parse_spec
from ragworks.index import open_index
from ragworks.index.search import auto_ef
from ragworks.runner import run_job

QUIET = Console(quiet=True)


def job(beir_dir, **index):
    return parse_spec({
        "name": "tiny",
        "corpus": {"source": {"format": "beir", "path": str(beir_dir)}, "chunking": {"max_tokens": 64, "overlap": 8}},
        "index": {"concurrency": [1, 1], "batch_size": 8, **index},
        "evaluate": {},
    })


@pytest.fixture(scope="module")
def finished(ray_local, tmp_path_factory):
    """One finished job shared by the tests that only read it."""
    from conftest import DOCS, QUERIES, write_jsonl

    root = tmp_path_factory.mktemp("tiny")
    beir = root / "beir"
    write_jsonl(beir / "corpus.jsonl", [{"_id": i, "title": t, "text": x} for i, t, x in DOCS])
    write_jsonl(beir / "queries.jsonl", [{"_id": q, "text": t} for q, t, _ in QUERIES])
    (beir / "qrels").mkdir()
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, _, rel in QUERIES for d in rel))
    workdir = root / "wd"
    manifests = run_job(job(beir), workdir=workdir, console=QUIET)
    return beir, workdir, manifests


def test_job_writes_artifacts_manifests_and_report(finished):
    _, workdir, m = finished
    assert set(m) == {"corpus", "index", "evaluate"}
    for stage in m:
        manifest = json.loads((workdir / stage / "manifest.json").read_text())
        assert manifest["key"] and manifest["seconds"] > 0 and manifest["config"]
    assert m["index"]["outputs"]["counts"]["rows"] == 6 and m["index"]["outputs"]["indexes"] == ["FTS"]
    report = json.loads((workdir / "evaluate" / "report.json").read_text())
    for mode in ("dense", "fulltext", "hybrid"):
        assert report["metrics"][mode]["ndcg@10"] > 0.8, (mode, report["metrics"][mode])
    assert (workdir / "evaluate" / "report.png").stat().st_size > 5000
    assert "| hybrid |" in (workdir / "evaluate" / "report.md").read_text()


def test_search_modes_find_the_right_document(finished):
    _, workdir, _ = finished
    searcher = open_index(workdir / "index")
    for mode in ("dense", "fulltext", "hybrid"):
        hits = searcher.search("volcano erupting lava", mode=mode, k=3)
        assert hits[0]["doc_id"] == "d2", (mode, hits)
        assert {"id", "doc_id", "text", "score"} <= set(hits[0])
        assert hits[0]["score"] >= hits[-1]["score"]


def test_hybrid_fuses_normalized_scores_as_the_index_is_configured(finished, tmp_path):
    _, workdir, _ = finished
    searcher = open_index(workdir / "index")
    assert (searcher.fusion, searcher.vector_weight, searcher.candidates) == ("linear", 0.5, 100)
    query = "carbon dioxide released in the oven and by plants"
    vector = searcher.embed([query])[0]

    def normalized(scores):
        lo, hi = min(scores.values()), max(scores.values())
        return {i: (s - lo) / (hi - lo) for i, s in scores.items()}

    dense = normalized({h["id"]: h["score"] for h in searcher.dense(vector, k=100)})  # score = -distance
    text = normalized({h["id"]: h["score"] for h in searcher.fulltext(query, k=100)})
    fused = {i: 0.5 * dense.get(i, 0.0) + 0.5 * text.get(i, 0.0) for i in dense.keys() | text.keys()}
    hits = searcher.search(query, mode="hybrid", k=3, vector=vector)
    assert [h["id"] for h in hits] == sorted(fused, key=fused.get, reverse=True)[:3]
    assert [h["score"] for h in hits] == pytest.approx(sorted(fused.values(), reverse=True)[:3], abs=1e-5)
    # a short top-k fuses the same candidate lists as a long one
    assert [h["id"] for h in searcher.search(query, mode="hybrid", k=1, vector=vector)] == [hits[0]["id"]]
    # all weight on the vector side ranks as dense search does
    dense_only = open_index(workdir / "index", vector_weight=1.0)
    ranked = [h["id"] for h in dense_only.search(query, mode="hybrid", k=4, vector=vector)]
    assert ranked == [h["id"] for h in searcher.dense(vector, k=4)]
    # an index built before fusion was configurable, and before typed outputs, keeps reciprocal rank fusion
    assert open_index(legacy_manifest(workdir / "index", tmp_path, drop_config=("hybrid",))).fusion == "rrf"


def legacy_manifest(stage_dir: Path, target: Path, drop_config=()) -> Path:
    """A stage's manifest as ragworks wrote it before typed outputs: the facts beside `outputs`, the
    settings only in `config`."""
    m = json.loads((stage_dir / "manifest.json").read_text())
    out = m.pop("outputs")
    paths = {k: v for k, v in out.items() if isinstance(v, str) and "/" in v and k != "embedder"}
    if m["stage"] == "index":
        paths["table"] = out["table"]
    m.update({k: v for k, v in out.items() if k not in paths and k in ("counts", "embedder", "indexes", "version",
                                                                      "metrics", "resumed_from_rows", "throughput")})
    m["outputs"] = paths
    m["config"] = {k: v for k, v in m["config"].items() if k not in drop_config}
    target.mkdir(parents=True, exist_ok=True)
    (target / "manifest.json").write_text(json.dumps(m))
    return target


def test_rerun_skips_finished_stages_and_reruns_what_changed(finished):
    beir, workdir, first = finished
    for f in beir.rglob("*.*"):  # the same data with new file times (a copy, a new machine): still up to date
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    again = run_job(job(beir), workdir=workdir, console=QUIET)
    assert all(again[s]["run_id"] == first[s]["run_id"] for s in first)  # nothing re-ran

    # a workdir written before typed outputs: still up to date, and a stage reading it gets its outputs
    for stage in first:
        legacy_manifest(workdir / stage, workdir / stage)
    assert all(run_job(job(beir), workdir=workdir, console=QUIET)[s]["run_id"] == first[s]["run_id"] for s in first)
    redone = run_job(job(beir), workdir=workdir, force=["evaluate"], console=QUIET)["evaluate"]
    assert redone["outputs"]["metrics"] == first["evaluate"]["outputs"]["metrics"]

    changed = parse_spec({**job(beir).model_dump(mode="json"), "evaluate": {"modes": ["fulltext"], "dataset": str(beir)}})
    third = run_job(changed, workdir=workdir, console=QUIET)
    assert third["corpus"]["run_id"] == first["corpus"]["run_id"]
    assert third["index"]["run_id"] == first["index"]["run_id"]
    assert third["evaluate"]["run_id"] != first["evaluate"]["run_id"]
    assert list(third["evaluate"]["outputs"]["metrics"]) == ["fulltext"]


def test_input_fingerprints_follow_content_not_file_times(tmp_path):
    from ragworks.manifest import files_fingerprint

    (tmp_path / "a" / "data").mkdir(parents=True)
    (tmp_path / "a" / "data" / "corpus.jsonl").write_text('{"_id": "1", "text": "cells"}\n')
    shutil.copytree(tmp_path / "a" / "data", tmp_path / "b" / "data", copy_function=shutil.copy)  # new mtimes
    same, copied = files_fingerprint(tmp_path / "a" / "data"), files_fingerprint(tmp_path / "b" / "data")
    assert same == copied
    f = tmp_path / "b" / "data" / "corpus.jsonl"
    stat = f.stat()
    f.write_text('{"_id": "1", "text": "CELLS"}\n')  # same size
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert files_fingerprint(tmp_path / "b" / "data") != same


def test_force_and_half_done_stage_rerun_downstream(ray_local, tmp_path, beir_dir):
    spec = job(beir_dir, embedder="static")  # which runs again is under test, not what they find
    first = run_job(spec, workdir=tmp_path, console=QUIET)
    forced = run_job(spec, workdir=tmp_path, force=["index"], console=QUIET)
    assert forced["corpus"]["run_id"] == first["corpus"]["run_id"]
    assert forced["index"]["run_id"] != first["index"]["run_id"]
    assert forced["evaluate"]["run_id"] != first["evaluate"]["run_id"]  # downstream of a re-run
    # a stage killed half-way leaves no manifest: the next run redoes it from a clean folder
    (tmp_path / "evaluate" / "manifest.json").unlink()
    (tmp_path / "evaluate" / "partial.tmp").write_text("left over")
    redone = run_job(spec, workdir=tmp_path, console=QUIET)
    assert redone["index"]["run_id"] == forced["index"]["run_id"]
    assert not (tmp_path / "evaluate" / "partial.tmp").exists()
    assert (tmp_path / "evaluate" / "manifest.json").exists()


def test_ann_index_is_built_once_the_table_is_large_enough(ray_local, tmp_path):
    from conftest import write_jsonl

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    docs = [{"_id": f"x{i}", "text": f"{words[i % 12]} {words[(i * 7) % 12]} record {i} about {words[(i * 5) % 12]}"}
            for i in range(300)]
    beir = tmp_path / "big"
    write_jsonl(beir / "corpus.jsonl", docs)
    spec = parse_spec({"corpus": {"source": {"path": str(beir)}},
                       "index": {"ann": {"min_rows": 256, "index_type": "IVF_FLAT", "num_partitions": 2},
                                 "concurrency": [1, 2], "batch_size": 32}})
    m = run_job(spec, workdir=tmp_path / "wd", console=QUIET)["index"]
    assert m["outputs"]["indexes"] == ["IVF_FLAT", "FTS"] and m["outputs"]["counts"]["rows"] == 300
    searcher = open_index(tmp_path / "wd" / "index")
    assert [i.index_type for i in searcher.table.list_indices() if i.columns == ["vector"]] == ["IvfFlat"]
    # `ann.ef: auto` travels as such and is sized from the table a searcher opens (a delta grows it)
    assert m["outputs"]["ef"] == "auto" and searcher.ef == 1000
    assert open_index(tmp_path / "wd" / "index", ef=64).ef == 64 and auto_ef(300_000) == 3000
    assert searcher.search("record 123", mode="hybrid", k=5)[0]["doc_id"] == "x123"
    # exact search compares every row, past the index: its top 10 are the 10 nearest by numpy
    rows = searcher.table.to_arrow().select(["id", "vector"])
    ids, vectors = rows["id"].to_pylist(), np.stack(rows["vector"].to_numpy(zero_copy_only=False))
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for query in (units[7], units[123] + units[250]):
        distance = 1 - units @ (query / np.linalg.norm(query))
        tenth = np.sort(distance)[9]
        found = searcher.dense(query, 10, columns=["id"], exact=True)
        assert len(found) == 10 and all(distance[ids.index(h["id"])] <= tenth + 1e-5 for h in found)

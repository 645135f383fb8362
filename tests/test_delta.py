"""A live corpus: a re-run over changed input updates the corpus and the LanceDB index in place, and ends
where a full rebuild over the same final input ends (real local Ray, real LanceDB folders)."""

import io
import json

import lance
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from ragworks.config import parse_spec
from ragworks.index import open_index
from ragworks.runner import run_job

WORDS = ("river mountain forest valley desert ocean island canyon glacier meadow prairie tundra swamp delta "
         "harbor lagoon plateau ridge summit basin").split()


def _text(seed: int, n: int = 90) -> str:
    import random

    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + str(rng.randrange(40)) for _ in range(n))


def write(folder, name: str, docs: list[tuple[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))


# the static embedder (model2vec): what these tests check holds for any embedder, and it loads in a second
# where sentence-transformers' import takes ten on 2 busy cores, in each of some twenty index runs
INDEX = {"concurrency": [1, 1], "embedder": "static"}


def spec(src, **index) -> dict:
    return parse_spec({
        "corpus": {"source": {"format": "jsonl", "path": str(src), "id_field": "id"},
                   "dedup": {"near": {"enabled": True, "threshold": 0.8}}, "chunking": {"max_tokens": 48, "overlap": 8}},
        "index": {**INDEX, **index},
    })


# a vector index from the first rows on, so updates fold rows into it and retrain it; a full-text index rebuilt
# only once a third of the rows were deleted since it was built, so a small delete folds in and a later one rebuilds
ANN = {"ann": {"min_rows": 10, "index_type": "IVF_FLAT", "num_partitions": 2}, "fulltext": {"rebuild_fraction": 0.34}}


def run(src, workdir, index: dict | None = None, **kwargs) -> tuple[dict, str]:
    out = io.StringIO()
    manifests = run_job(spec(src, **(index or {})), workdir=workdir, console=Console(file=out, width=200), **kwargs)
    return manifests, out.getvalue()


def table_rows(manifest: dict) -> list[tuple]:
    o = manifest["outputs"]
    ds = lance.dataset(f"{o['lancedb']}/{o['table']}.lance", version=o["version"])
    return sorted(tuple(r.values()) for r in ds.to_table(columns=["id", "doc_id", "chunk_hash", "doc_hash"]).to_pylist())


def corpus_chunks(manifest: dict) -> list[tuple]:
    """The corpus stage's chunks as `table_rows` gives the table's."""
    files = sorted(__import__("glob").glob(f"{manifest['outputs']['chunks']}/**/*.parquet", recursive=True))
    return sorted((r["id"], r["doc_id"], r["chunk_hash"], r["doc_hash"]) for f in files
                  for r in pq.read_table(f, columns=["id", "doc_id", "chunk_hash", "doc_hash"]).to_pylist())


def decisions(manifest: dict) -> list[tuple]:
    """Every record's decision (kept, duplicate or reject), and the duplicates' and rejects' details."""
    rows = []
    for f in sorted(__import__("glob").glob(f"{manifest['outputs']['records']}/**/*.parquet", recursive=True)):
        rows += [(r["doc_id"], r["kind"]) for r in pq.read_table(f, columns=["doc_id", "kind"]).to_pylist()]
    for name in ("duplicates", "rejects"):
        for f in sorted(__import__("glob").glob(f"{manifest['outputs'][name]}/**/*.parquet", recursive=True)):
            rows += [(r["doc_id"], r["kind"], r["duplicate_of"], r["reason"]) for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=str)


def test_a_changed_corpus_updates_the_index_in_place_as_a_rebuild_would(ray_local, tmp_path):
    src = tmp_path / "src"
    original = _text(1)
    near = original.split()
    near[45] = "unrelated"  # one word of 90: a near copy of `original` (J about 0.9)
    a = [(f"a{i}", _text(10 + i)) for i in range(5)] + [("orig", original)]
    b = [(f"b{i}", _text(20 + i)) for i in range(4)] + [("near", " ".join(near)), ("copy", a[0][1])]
    write(src, "a.jsonl", a)
    write(src, "b.jsonl", b)
    first, _ = run(src, tmp_path / "wd", ANN)
    assert first["corpus"]["outputs"]["counts"]["duplicates"] == 2  # `near` of `orig`, `copy` of a0
    assert first["index"]["outputs"]["indexes"] == ["IVF_FLAT", "FTS"]
    v1 = first["index"]["outputs"]["version"]

    # change one document, delete two (one is the original `near` copies), add a file with a new document
    # and an exact copy of b1
    a[1] = ("a1", _text(99))
    del a[5], a[3]
    write(src, "a.jsonl", a)
    write(src, "c.jsonl", [("c0", "glaciers carve fjords " + _text(7)), ("c1", b[1][1])])
    second, log = run(src, tmp_path / "wd", ANN)
    delta = second["corpus"]["outputs"]["delta"]
    assert delta["files_read"] == 2 and delta["files_removed"] == 0  # b.jsonl was not read again
    assert "2 added, 1 changed, 2 deleted, 3 unchanged" in log, log
    # to index: c0, the changed a1, and `near`, kept now that its original is gone; a3 and orig dropped
    assert (delta["counts"]["upsert"], delta["counts"]["replace"]) == (3, 5)
    assert "updating the index in place" in log and "rebuilding" not in log
    assert second["index"]["outputs"]["version"] > v1
    deleted = second["index"]["outputs"]["counts"]["deleted"]
    assert 0 < deleted < 0.34 * second["index"]["outputs"]["counts"]["rows"]
    assert second["index"]["outputs"]["fts_deleted"] == deleted  # folded in: the full-text index not rebuilt

    rebuilt, _ = run(src, tmp_path / "rebuilt", ANN)
    assert table_rows(second["index"]) == table_rows(rebuilt["index"])
    assert decisions(second["corpus"]) == decisions(rebuilt["corpus"])
    assert corpus_chunks(second["corpus"]) == corpus_chunks(rebuilt["corpus"])
    assert second["corpus"]["outputs"]["counts"] == rebuilt["corpus"]["outputs"]["counts"]

    searcher = open_index(tmp_path / "wd" / "index")
    assert searcher.search("glaciers carve fjords", mode="fulltext", k=1)[0]["doc_id"] == "c0"
    assert not searcher.table.search().where("doc_id IN ('orig', 'a3')").limit(5).to_list()
    assert searcher.chunk("near#0") is not None

    # nothing changed: nothing is written, the table stays at its version
    third, log = run(src, tmp_path / "wd", ANN)
    assert "corpus: up to date" in log and "index: up to date" in log
    assert third["index"]["outputs"]["version"] == second["index"]["outputs"]["version"]
    assert lance.dataset(f"{third['index']['outputs']['lancedb']}/chunks.lance").version == \
        second["index"]["outputs"]["version"]

    # additions only: no delete, so both indexes take the new rows in (no rebuild), and every row is indexed
    write(src, "d.jsonl", [("d0", "moraines mark where glaciers " + _text(8))])
    fourth, log = run(src, tmp_path / "wd", ANN)
    counts = fourth["index"]["outputs"]["counts"]
    assert counts["deleted"] == 0 and counts["added"] >= 1 and counts["rows"] == second["index"]["outputs"]["counts"]["rows"] + counts["added"]
    searcher = open_index(tmp_path / "wd" / "index")
    assert searcher.search("moraines mark where glaciers", mode="fulltext", k=1)[0]["doc_id"] == "d0"
    assert searcher.search("moraines mark where glaciers " + _text(8), mode="dense", k=1)[0]["doc_id"] == "d0"
    for name in ("text_idx", "vector_idx"):
        assert searcher.table.index_stats(name).num_unindexed_rows == 0, name
    # the full-text index: built once, then each update's rows in a segment of their own (none rewritten)
    out = fourth["index"]["outputs"]
    text_index = [i for i in lance.dataset(f"{out['lancedb']}/chunks.lance").describe_indices() if i.name == "text_idx"]
    assert len(text_index[0].segments) == 3
    assert fourth["index"]["outputs"]["fts_deleted"] == deleted

    # deletes past fulltext.rebuild_fraction since the full-text index was built: rebuilt, and its count starts again
    write(src, "b.jsonl", b[:1])
    fifth, log = run(src, tmp_path / "wd", ANN)
    out = fifth["index"]["outputs"]
    assert "rebuilding the full-text index" in log and out["fts_deleted"] == 0
    text_index = [i for i in lance.dataset(f"{out['lancedb']}/chunks.lance").describe_indices() if i.name == "text_idx"]
    assert len(text_index[0].segments) == 1  # rebuilt whole
    assert out["counts"]["deleted"] + deleted >= 0.34 * out["counts"]["rows"]
    searcher = open_index(tmp_path / "wd" / "index")
    assert searcher.search("moraines mark where glaciers", mode="fulltext", k=1)[0]["doc_id"] == "d0"
    assert "b2" not in {h["doc_id"] for h in searcher.search(b[2][1], mode="fulltext", k=20)}


def test_an_update_cut_short_converges_on_the_re_run(ray_local, tmp_path, monkeypatch):
    """A run that dies after the index update's delete commit leaves a table ahead of its manifest: the re-run
    restores the manifest's version and applies the delta whole (no chunk twice, no delete lost)."""
    from ragworks import lance_sink

    src = tmp_path / "src"
    docs = [(f"d{i}", _text(40 + i)) for i in range(6)]
    write(src, "a.jsonl", docs)
    run(src, tmp_path / "wd")
    docs[2] = ("d2", _text(77))
    write(src, "a.jsonl", docs[:5] + [("new", _text(78))])

    written = lance_sink.LanceFragments.on_write_complete

    def die(self, write_result):
        if self.uri.endswith("ledger.lance"):  # the corpus stage's dedup ledger: this test kills the index's write
            return written(self, write_result)
        raise RuntimeError("killed between the delete and the append")

    with monkeypatch.context() as m:
        m.setattr(lance_sink.LanceFragments, "on_write_complete", die)
        with pytest.raises(Exception, match="killed between"):
            run(src, tmp_path / "wd")
    again, log = run(src, tmp_path / "wd")
    assert "an update was cut short" in log
    rows = table_rows(again["index"])
    assert rows == corpus_chunks(again["corpus"])  # every chunk of the final corpus once, none of the replaced
    assert len({r[0] for r in rows}) == len(rows)


def clone(src, dst) -> None:
    """A copy of a finished workdir whose manifests name the copy's own files (they hold absolute paths)."""
    import shutil

    shutil.copytree(src, dst)
    for manifest in dst.rglob("manifest.json"):
        manifest.write_text(manifest.read_text().replace(str(src), str(dst)))


def test_a_driver_killed_at_five_moments_of_an_update_converges_on_the_re_run(ray_local, tmp_path):
    """SIGKILL of `ragworks run` (connected to the suite's Ray) at five seeded moments of an update; each re-run
    ends with the table and the decisions of the uninterrupted update: no chunk id twice, no delete lost."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from ragworks.manifest import read_manifest

    src = tmp_path / "src"
    a = [(f"a{i}", _text(60 + i)) for i in range(8)]
    b = [(f"b{i}", _text(80 + i)) for i in range(8)]
    write(src, "a.jsonl", a)
    write(src, "b.jsonl", b)
    job = tmp_path / "job.yaml"
    data = {"corpus": {"source": {"format": "jsonl", "path": str(src), "id_field": "id"},
                       "dedup": {"near": {"enabled": True, "threshold": 0.8}}, "chunking": {"max_tokens": 48, "overlap": 8}},
            "index": INDEX}
    job.write_text(yaml.safe_dump(data))
    address = ray_local.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}

    def command(workdir):
        return [sys.executable, "-m", "ragworks.cli", "run", str(job), "--workdir", str(workdir), "--address", address]

    run(src, tmp_path / "base")
    a[2] = ("a2", _text(99))
    write(src, "a.jsonl", a[:6] + [("a9", b[3][1])])  # a2 changed, a6 and a7 deleted, a9 a copy of b3
    write(src, "c.jsonl", [(f"c{i}", _text(120 + i)) for i in range(3)])
    clone(tmp_path / "base", tmp_path / "straight")
    started = time.monotonic()
    done = subprocess.run(command(tmp_path / "straight"), env=env, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    expected = table_rows(read_manifest(tmp_path / "straight" / "index"))
    expected_decisions = decisions(read_manifest(tmp_path / "straight" / "corpus"))

    rng = random.Random(33)
    for moment in sorted(rng.uniform(0.15, 0.95) * took for _ in range(5)):
        wd = tmp_path / f"killed-at-{moment:.1f}s"
        clone(tmp_path / "base", wd)
        proc = subprocess.Popen(command(wd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(moment)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        run(src, wd)  # the re-run, in this process (the same job on the same Ray; no second interpreter start-up)
        rows = table_rows(read_manifest(wd / "index"))
        assert rows == expected, f"kill at {moment:.1f} s of {took:.1f} s: the table differs from the uninterrupted one"
        assert len({r[0] for r in rows}) == len(rows)
        assert decisions(read_manifest(wd / "corpus")) == expected_decisions

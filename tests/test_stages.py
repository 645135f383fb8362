"""The stage registry: one declaration per stage, from which order, spec, help, report and status derive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from conftest import DOCS, write_jsonl
from rich.console import Console
from typer.testing import CliRunner

from ragworks.config import JobSpec, parse_spec
from ragworks.runner import reason, run_job
from ragworks.sections import Section
from ragworks.stage import Outputs, StageDef, StageError, register, registry, run_order, unregister

ROOT = Path(__file__).resolve().parents[1]
QUIET = Console(quiet=True)


def test_every_spec_section_is_one_registered_stage_and_the_order_follows_needs():
    stages = registry()
    sections = list(JobSpec.model_fields)
    assert sections[:3] == ["name", "workdir", "ray"] and sections[3:] == run_order()  # the spec: one section a stage
    for name, stage in stages.items():
        assert stage.config in typing.get_args(JobSpec.model_fields[name].annotation), name
    order = run_order()
    assert sorted(order) == sorted(stages)
    position = {name: i for i, name in enumerate(order)}
    for name, stage in stages.items():
        for read in stage.needs + stage.optional:
            assert position[read] < position[name], (read, name)
    assert order[-1] == "evaluate"  # it reports on every stage before it
    assert order[:7] == ["corpus", "index", "synthesize", "filters", "negatives", "train_reranker", "train_retriever"]

    help_text = CliRunner().invoke(__import__("ragworks.cli", fromlist=["app"]).app, ["run", "--help"],
                                   env={"COLUMNS": "200"}).output
    for name, stage in stages.items():
        assert f"{name}: {stage.help}" in " ".join(help_text.split()), name

    found = subprocess.run(["grep", "-rn", '\\["outputs"\\]', "platform", "benchmarks"], cwd=ROOT,
                           capture_output=True, text=True)
    assert found.stdout == "", found.stdout  # stages and benchmarks read typed outputs, never a manifest's dict

    graph = subprocess.run([sys.executable, "-m", "ragworks.stage"], capture_output=True, text=True, check=True)
    rows = [line for line in graph.stdout.splitlines() if line and not line.startswith((" ", "("))]
    assert [row.split()[0] for row in rows] == order, graph.stdout  # every stage, in run order
    for row in rows:  # NAME reads NEED, ..., OPTIONAL?, ... -> OUTPUTS(fields)
        name, rest = row.split(" ", 1)
        reads, hands = rest.strip().removeprefix("reads ").split(" -> ")
        stage = stages[name]
        assert reads.strip() == (", ".join([*stage.needs, *(f"{o}?" for o in stage.optional)]) or "-"), row
        assert hands.startswith(stage.outputs.__name__ + "("), row


def test_registry_refuses_unknown_inputs_cycles_and_twins():
    class Cfg(Section):
        pass

    with pytest.raises(ValueError, match="unregistered stages: \\['nowhere'\\]"):
        register(StageDef("orphan", Cfg, lambda cfg, ctx: Outputs(), needs=("nowhere",)))
    with pytest.raises(ValueError, match="registered already"):
        register(StageDef("corpus", Cfg, lambda cfg, ctx: Outputs()))
    assert "orphan" not in registry()


def test_products_are_found_by_what_they_are_and_serve_picks_the_gates_index(tmp_path):
    """Serve finds a job's tuned index, ship choice, adapter and reranker through the registry
    (`StageDef.provides`), typed, whatever folder the stage writes to."""
    from ragworks.manifest import write_manifest
    from ragworks.serve.deployments import served_index
    from ragworks.stage import product
    from ragworks.storage import Folder
    from ragworks.train import RerankerOutputs

    workdir = Folder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no finished index"):
        served_index(workdir)
    assert product(workdir, "reranker") is None
    with pytest.raises(KeyError, match="known products: adapter, index, reranker, ship_choice, tuned_index"):
        product(workdir, "teacher")
    index = {"lancedb": "db", "table": "chunks", "embedder": "base"}
    for stage in ("index", "index_tuned"):
        write_manifest(tmp_path / stage, {"stage": stage, "outputs": index})
        assert served_index(workdir)[0].path.endswith(stage)
    write_manifest(tmp_path / "gate", {"stage": "gate", "outputs": {
        "serve": "index", "winner": "base", "decided_on": "heldout", "gains": {"dense": -0.02}}})
    folder, why = served_index(workdir)
    assert folder.path.endswith("/index") and why.startswith("the ship gate's choice")
    write_manifest(tmp_path / "train_reranker", {"stage": "train_reranker", "outputs": {"model": "/m/reranker"}})
    found = product(workdir, "reranker")
    assert isinstance(found[1], RerankerOutputs) and found[1].model == "/m/reranker"


# ------------------------------------------------------ a stage of one's own
class WordCountsConfig(Section):
    """The whole config of the stage below: adding a stage is this class and one StageDef."""

    min_word_length: int = 1


class WordCountsOutputs(Outputs):
    words: str


def longest_word(spec, spec_dir) -> list[str]:
    """A rule of the stage's own, checked when a spec is loaded: it may read other sections."""
    if spec.word_counts.min_word_length > 20 and spec.index is None:
        return ["word_counts.min_word_length: over 20 needs an index section"]
    return []


def count_words(cfg: WordCountsConfig, ctx) -> WordCountsOutputs:
    """Words per chunk, in a Ray Data pass over the corpus stage's chunks (read through its typed outputs)."""
    import pyarrow as pa
    import ray

    def words(batch: pa.Table) -> pa.Table:
        n = [sum(len(w) >= cfg.min_word_length for w in t.split()) for t in batch["text"].to_pylist()]
        return pa.table({"id": batch["id"], "words": pa.array(n, pa.int64())})

    out = ctx.stage_dir / "words"
    ray.data.read_parquet(ctx.output("corpus").chunks).map_batches(words, batch_format="pyarrow").write_parquet(str(out))
    written = ray.data.read_parquet(str(out))
    return WordCountsOutputs(words=str(out), counts={"chunks": written.count(), "words": int(written.sum("words"))})


def test_a_registered_stage_runs_in_a_job_and_shows_in_the_report(ray_local, tmp_path, beir_dir):
    from ray import cloudpickle

    # Ray's workers cannot import a test module: ship its code by value (a real stage lives in a package)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    register(StageDef("word_counts", WordCountsConfig, count_words, WordCountsOutputs, needs=("corpus",),
                      work=("chunks", "chunks"), help="words per chunk", check=longest_word))
    try:
        assert run_order().index("word_counts") < run_order().index("evaluate")
        spec = parse_spec({"corpus": {"source": {"path": str(beir_dir)}},
                           "index": {"concurrency": [1, 1], "embedder": "static"},
                           "word_counts": {"min_word_length": 4}, "evaluate": {}})
        with pytest.raises(Exception, match="word_countz: unknown key \\(did you mean 'word_counts'\\?\\)"):
            parse_spec({"corpus": {"source": {"path": str(beir_dir)}}, "word_countz": {}})
        with pytest.raises(Exception, match="word_counts.min_word_length: over 20 needs an index section"):
            parse_spec({"corpus": {"source": {"path": str(beir_dir)}}, "word_counts": {"min_word_length": 21}})
        m = run_job(spec, workdir=tmp_path / "wd", console=QUIET)
    finally:
        unregister("word_counts")
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])

    manifest = json.loads((tmp_path / "wd" / "word_counts" / "manifest.json").read_text())
    assert manifest == m["word_counts"] and manifest["config"] == {"min_word_length": 4}
    assert manifest["outputs"]["counts"]["chunks"] == len(DOCS)
    expected = sum(sum(len(w) >= 4 for w in f"{t}. {x}".split()) for _, t, x in DOCS)  # the title leads each chunk
    assert manifest["outputs"]["counts"]["words"] == expected
    report = json.loads((tmp_path / "wd" / "evaluate" / "report.json").read_text())
    row = next(r for r in report["stages"] if r["stage"] == "word_counts")
    assert row["work"] == len(DOCS) and row["unit"] == "chunks" and row["per_s"] > 0
    assert "| word_counts |" in (tmp_path / "wd" / "evaluate" / "report.md").read_text()


# ------------------------------------------------------------- failures
def test_a_failing_stage_says_so_in_one_line_and_exits_1(ray_local, tmp_path):
    write_jsonl(tmp_path / "docs" / "corpus.jsonl", [{"_id": "a", "title": "no text"}, {"_id": "b", "text": ""}])
    job = tmp_path / "job.yaml"
    job.write_text(f"name: broken\nworkdir: {tmp_path / 'wd'}\nray: {{num_cpus: 2}}\n"
                   f"corpus: {{source: {{format: jsonl, path: {tmp_path / 'docs'}}}}}\nindex: {{}}\n")
    env = {**os.environ, "COLUMNS": "400", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}

    def ragworks(*args):
        # on the suite's Ray: a Ray of its own would start twice for what fails in a second
        address = ray_local.get_runtime_context().gcs_address
        return subprocess.run([sys.executable, "-m", "ragworks.cli", "run", str(job), "--address", address, *args], env=env,
                              capture_output=True, text=True, timeout=300)

    plain = ragworks()
    assert plain.returncode == 1, plain.stdout + plain.stderr
    failed = [ln for ln in plain.stdout.splitlines() if "failed" in ln]
    log = tmp_path / "wd" / "index" / "error.log"
    rejects = json.loads((tmp_path / "wd" / "corpus" / "manifest.json").read_text())["outputs"]["rejects"]
    assert rejects.startswith(str(tmp_path / "wd" / "corpus" / "v-")) and rejects.endswith("/rejects")
    assert failed == [f"error: stage 'index' failed: the corpus stage produced no chunks to index (2 records "
                      f"rejected, 0 duplicates); check corpus.source; the reasons are in {rejects} "
                      f"(traceback: {log})"], plain.stdout
    assert "Traceback" not in plain.stdout + plain.stderr and "Traceback" in log.read_text()

    debug = ragworks("--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stdout and "raise StageError" in debug.stdout


def test_an_unexpected_error_is_named_by_its_innermost_cause(ray_local):
    import ray

    @ray.remote
    def divide():
        return 1 / 0

    with pytest.raises(Exception) as err:
        ray.get(divide.remote())
    assert reason(err.value) == "ZeroDivisionError: division by zero"
    assert str(StageError("x", "do y", stage="s", log="/l")) == "stage 's' failed: x; do y (traceback: /l)"

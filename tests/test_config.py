"""Spec validation: every error names the field, and nothing starts before the spec is right."""

import pytest
import yaml
from typer.testing import CliRunner

from ragworks.cli import app
from ragworks.config import SpecError, load_spec, parse_spec


def spec(beir_dir, **sections):
    base = {"corpus": {"source": {"format": "beir", "path": str(beir_dir)}}}
    base.update(sections)
    return base


def test_defaults_fill_everything(beir_dir):
    s = parse_spec(spec(beir_dir, index={}, evaluate={}))
    assert s.corpus.chunking.max_tokens == 256 and s.index.embedder == "base"
    assert s.evaluate.dataset == str(beir_dir.resolve())  # defaults to the BEIR corpus
    assert s.index.fulltext.enabled


def test_unknown_key_is_named_with_a_suggestion(beir_dir):
    data = spec(beir_dir)
    data["corpus"]["chunkin"] = {"max_tokens": 10}
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert "corpus.chunkin: unknown key (did you mean 'chunking'?)" in str(err.value)


def test_nested_unknown_key(beir_dir):
    data = spec(beir_dir)
    data["corpus"]["dedup"] = {"near": {"treshold": 0.5}}
    with pytest.raises(SpecError, match=r"corpus\.dedup\.near\.treshold: unknown key \(did you mean 'threshold'"):
        parse_spec(data)


def test_wrong_type_is_named(beir_dir):
    data = spec(beir_dir, index={"batch_size": "many"})
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert "index.batch_size" in str(err.value) and "'many'" in str(err.value)


def test_bad_enum_and_cross_field_rules(beir_dir):
    with pytest.raises(SpecError, match=r"corpus\.source\.format"):
        parse_spec({"corpus": {"source": {"format": "csv", "path": str(beir_dir)}}})
    with pytest.raises(SpecError, match="overlap"):
        parse_spec(spec(beir_dir) | {"corpus": {"source": {"path": str(beir_dir)}, "chunking": {"max_tokens": 32, "overlap": 32}}})
    with pytest.raises(SpecError, match="evaluate: needs an index section"):
        parse_spec(spec(beir_dir, evaluate={}))
    claims = {"rag": {"claims": 8}}
    with pytest.raises(SpecError, match=r"rag_examples\.rag\.claims: needs a filters section"):
        parse_spec(spec(beir_dir, index={}, rag_examples=claims))
    with pytest.raises(SpecError, match=r"synthesize\.rag\.claims: .*set them in the rag_examples section"):
        parse_spec(spec(beir_dir, index={}, synthesize=claims, filters={}))
    assert parse_spec(spec(beir_dir, index={}, synthesize={}, filters={}, rag_examples=claims)).rag_examples.rag.claims == 8


def test_missing_files_are_named(beir_dir, tmp_path):
    with pytest.raises(SpecError, match=r"corpus\.source\.path: no such file or folder: nowhere/at/all"):
        parse_spec({"corpus": {"source": {"path": "nowhere/at/all"}}})
    (beir_dir / "qrels" / "test.tsv").unlink()
    with pytest.raises(SpecError, match=r"evaluate\.dataset: .* has no qrels/test\.tsv"):
        parse_spec(spec(beir_dir, index={}, evaluate={}))


def test_paths_resolve_against_the_spec_folder(beir_dir, tmp_path, monkeypatch):
    job = beir_dir.parent / "job.yaml"
    job.write_text(yaml.safe_dump({"corpus": {"source": {"path": beir_dir.name}}}))
    monkeypatch.chdir("/")
    assert load_spec(job).corpus.source.path == str(beir_dir)


def test_overrides_set_fields_and_are_checked_like_the_file(beir_dir, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec(beir_dir, index={}, synthesize={"limit": 4}, filters={})))
    s = load_spec(job, ["synthesize.limit=16", "synthesize.engine.concurrency=[1, 4]",
                        "synthesize.engine.resources={gpu-worker: 1}", "filters=null", "workdir=/tmp/elsewhere"])
    assert s.synthesize.limit == 16 and s.synthesize.engine.concurrency == (1, 4)
    assert s.synthesize.engine.resources == {"gpu-worker": 1.0}
    assert s.filters is None and s.workdir == "/tmp/elsewhere"
    assert load_spec(job).synthesize.limit == 4  # the file is untouched
    with pytest.raises(SpecError, match=r"synthesize.engine.bach_size: unknown key \(did you mean 'batch_size'\?\)"):
        load_spec(job, ["synthesize.engine.bach_size=4"])
    with pytest.raises(SpecError, match="synthesize.limit: Input should be a valid integer"):
        load_spec(job, ["synthesize.limit=many"])
    with pytest.raises(SpecError, match="not KEY=VALUE"):
        load_spec(job, ["synthesize.limit"])
    with pytest.raises(SpecError, match="synthesize.limit is not a section"):
        load_spec(job, ["synthesize.limit.x=1"])


def test_a_workdir_on_storage_ragworks_cannot_reach_is_refused_by_name(beir_dir, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec(beir_dir)))
    result = CliRunner().invoke(app, ["run", str(job), "--workdir", "hdfs://namenode/runs/x"])
    assert result.exit_code == 2 and "hdfs://namenode/runs/x: unsupported scheme" in result.output
    assert "s3://" in result.output


def test_cluster_commands_name_what_is_wrong(beir_dir, tmp_path, monkeypatch):
    result = CliRunner().invoke(app, ["status", "--address", "http://127.0.0.1:1"])  # nothing listens there
    assert result.exit_code == 2 and "no Ray Jobs API at http://127.0.0.1:1" in result.output
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec(beir_dir)))
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    result = CliRunner().invoke(app, ["submit", str(job), "--address", "http://127.0.0.1:1"])
    assert result.exit_code == 2 and "must sit inside the project folder" in " ".join(result.output.split())


def test_cli_rejects_a_bad_spec_before_any_work(tmp_path):
    job = tmp_path / "bad.yaml"
    job.write_text("corpus:\n  source: {path: missing-folder}\n  chunking: {max_tokens: lots}\n")
    result = CliRunner().invoke(app, ["run", str(job), "--workdir", str(tmp_path / "wd")])
    assert result.exit_code == 2
    assert "corpus.chunking.max_tokens" in result.output
    assert not (tmp_path / "wd").exists()  # nothing ran
    result = CliRunner().invoke(app, ["eval", "--dataset", str(tmp_path), "--fusion", "max", "--workdir", str(tmp_path / "wd")])
    assert result.exit_code == 2 and "index.hybrid.fusion" in result.output and "'linear' or 'rrf'" in result.output
    assert not (tmp_path / "wd").exists()


def test_help_teaches():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "jobs/quickstart.yaml" in result.output
    result = CliRunner().invoke(app, ["run", "--help"])
    assert "--force" in result.output and "manifest" in result.output

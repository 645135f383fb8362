import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """pytest turns faulthandler off once the session ends, so a crash while the interpreter shuts down (CI
    saw one: every test passed, then exit 139) printed nothing: keep it on, every thread, to the end."""
    import faulthandler
    import sys

    faulthandler.enable(file=sys.__stderr__, all_threads=True)


S3_BUCKET = "ragworks-test"


@pytest.fixture(scope="session")
def s3():
    """S3 on 127.0.0.1 (moto), as a MinIO or S3 workdir would be reached: the endpoint and keys go in the
    environment, where pyarrow, LanceDB and every Ray worker started afterwards read them."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
           "AWS_ALLOW_HTTP": "true"}  # LanceDB's object store refuses plain http without it
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=S3_BUCKET)
        yield env
    server.stop()


def s3_keys(prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="session")
def ray_local(s3):
    """One real local Ray for the whole session, as the embedded default starts it (after `s3`, so its
    workers can reach the test bucket)."""
    import ray

    from ragworks.config import RayConfig
    from ragworks.runtime import configure_data

    temp_dir = tempfile.mkdtemp(prefix="rw-suite-")  # a temp dir of its own: nothing shared with another Ray
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", _temp_dir=temp_dir,
                 _system_config={"metrics_report_interval_ms": 1000})  # /metrics tests wait a second, not ten
    configure_data(RayConfig())
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jsonl(path: Path, rows: list, raw_lines: list[bytes] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for r in rows:
            f.write(json.dumps(r).encode() + b"\n")
        for line in raw_lines:
            f.write(line + b"\n")
    return path


DOCS = [
    ("d1", "Photosynthesis", "Plants convert sunlight, water and carbon dioxide into glucose and oxygen in their chloroplasts."),
    ("d2", "Volcanoes", "Magma rises through the crust and erupts as lava, ash and volcanic gases from a volcano."),
    ("d3", "Vaccines", "A vaccine trains the immune system to recognise a pathogen by exposing it to an antigen."),
    ("d4", "Black holes", "A black hole is a region of spacetime where gravity is so strong that not even light escapes."),
    ("d5", "Bread baking", "Yeast ferments sugars in the dough, releasing carbon dioxide that makes bread rise in the oven."),
    ("d6", "Tides", "Ocean tides are caused by the gravitational pull of the moon and the sun on the seas of the earth."),
]
QUERIES = [
    ("q1", "how do plants make glucose from sunlight", {"d1": 1}),
    ("q2", "lava and ash erupting from a volcano", {"d2": 1}),
    ("q3", "immune system learns to recognise a pathogen", {"d3": 1}),
    ("q4", "gravity so strong light cannot escape", {"d4": 1}),
    ("q5", "why does the moon cause ocean tides", {"d6": 1}),
]


@pytest.fixture
def beir_dir(tmp_path) -> Path:
    """A tiny BEIR folder: six documents, five judged queries."""
    root = tmp_path / "beir"
    write_jsonl(root / "corpus.jsonl", [{"_id": i, "title": t, "text": x} for i, t, x in DOCS])
    write_jsonl(root / "queries.jsonl", [{"_id": q, "text": t} for q, t, _ in QUERIES])
    (root / "qrels").mkdir()
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, _, rel in QUERIES for d, g in rel.items()]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


# ------------------------------------------------------ a retriever-training job
FACTS = [
    ("photo", "Plants convert sunlight water and carbon dioxide into glucose and oxygen inside their chloroplasts"),
    ("volcano", "Magma rises through the crust and erupts as lava ash and gases from active volcanoes"),
    ("vaccine", "A vaccine trains the immune system to recognise a pathogen by showing it an antigen"),
    ("hole", "A black hole is a region of spacetime where gravity stops even light from escaping"),
    ("bread", "Yeast ferments sugars in dough and the carbon dioxide makes bread rise in the oven"),
    ("tide", "Ocean tides come from the gravitational pull of the moon and the sun on the seas"),
    ("dna", "DNA stores genetic information as a sequence of four bases along a double helix"),
    ("quake", "Earthquakes happen when tectonic plates slip suddenly along a fault in the crust"),
    ("rain", "Water vapour condenses into droplets around dust in clouds and falls as rain"),
    ("heart", "The heart pumps blood through arteries to the organs and it returns through veins"),
    ("copper", "Copper conducts electricity well so it is used for wires in homes and machines"),
    ("bee", "Bees carry pollen between flowers while they collect nectar to make their honey"),
]


@pytest.fixture
def facts_dir(tmp_path) -> Path:
    docs = [{"_id": k, "title": k, "text": f"{v}. " + " ".join(reversed(v.lower().split()))} for k, v in FACTS]
    write_jsonl(tmp_path / "facts" / "corpus.jsonl", docs)
    return tmp_path / "facts"


def train_job(facts_dir, url, evaluate=True, **train) -> dict:
    """A job that trains the retriever on queries from a fake LLM at `url` and re-indexes with it."""
    data = {
        "corpus": {"source": {"path": str(facts_dir)}, "chunking": {"max_tokens": 24, "overlap": 4, "title": False}},
        "index": {"concurrency": [1, 1], "embedder": "trained"},
        "synthesize": {"engine": {"kind": "openai", "base_url": url, "model": "fake", "batch_size": 8}},
        "filters": {"consistency": False, "length": {"min_words": 3}},
        "negatives": {"per_query": 2, "skip_top": 0, "candidates": 20, "mode": "dense"},
        "train_retriever": {"batch_size": 4, "negatives": 1, "max_seq_length": 32, "learning_rate": 5e-5,
                            "validation_fraction": 0.2, "workers": 1, "cpus_per_worker": 1, **train},
    }
    if evaluate:
        data["evaluate"] = {"dataset": str(facts_dir), "modes": ["fulltext", "dense"]}
    return data


@pytest.fixture
def facts_qrels(facts_dir):
    write_jsonl(facts_dir / "queries.jsonl", [{"_id": f"q-{k}", "text": " ".join(v.split()[2:9])} for k, v in FACTS])
    (facts_dir / "qrels").mkdir()
    (facts_dir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q-{k}\t{k}\t1\n" for k, _ in FACTS))
    return facts_dir


# ------------------------------------------------------ pages in a real browser
def chromium() -> str:
    """The system's Chromium (Debian's package, which scripts/install.sh test installs): browser builds
    cannot be downloaded on these machines."""
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "no chromium on PATH: bash scripts/install.sh test installs Debian's"
    return found


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium driven by Playwright (its own browser download is never used)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def screenshot_dir(tmp_path) -> str:
    """RAGWORKS_SCREENSHOTS=docs/img keeps the pages' screenshots for the README; else a temporary folder."""
    return os.environ.get("RAGWORKS_SCREENSHOTS") or str(tmp_path)


# ------------------------------------------------------ a cross-encoder made here
@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> str:
    """A 2-layer BERT with a one-logit head (random, seeded) and the bundled embedder's tokenizer, saved as a
    Hugging Face folder: what `rerank.model` and `teacher` load, with no hub access, in a fraction of a second."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from ragworks.models import resolve_embedder

    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    tokenizer = AutoTokenizer.from_pretrained(resolve_embedder("base"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)

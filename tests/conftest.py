import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the whole session, as the embedded default starts it."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


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

"""The corpus stage on real local Ray: readers, normalisation, dedup, chunking, rejects."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import write_jsonl
from rich.console import Console

from ragworks.checkpoint import Checkpoints
from ragworks.config import parse_spec
from ragworks.corpus.config import ChunkingConfig
from ragworks.corpus.chunking import Chunk, token_windows
from ragworks.runner import run_job

QUIET = Console(quiet=True)


def run_corpus(tmp_path, source: dict, **corpus) -> dict:
    spec = parse_spec({"corpus": {"source": source, **corpus}})
    return run_job(spec, workdir=tmp_path / "wd", console=QUIET)["corpus"]


def rows(manifest: dict, name: str) -> list[dict]:
    folder = manifest["outputs"][name]
    files = sorted(__import__("glob").glob(f"{folder}/**/*.parquet", recursive=True))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def test_beir_reader_prepends_titles(ray_local, tmp_path, beir_dir):
    m = run_corpus(tmp_path, {"format": "beir", "path": str(beir_dir)})
    chunks = rows(m, "chunks")
    assert m["outputs"]["counts"] == {"input_records": 6, "documents": 6, "chunks": 6, "duplicates": 0, "rejects": 0}
    by_id = {c["id"]: c for c in chunks}
    assert by_id["d1#0"]["doc_id"] == "d1"
    assert by_id["d1#0"]["text"].startswith("Photosynthesis\nPlants convert sunlight")
    assert by_id["d1#0"]["source"].endswith("corpus.jsonl") and by_id["d1#0"]["line"] == 1


def test_jsonl_reader_custom_fields_and_metadata(ray_local, tmp_path):
    path = write_jsonl(tmp_path / "in" / "docs.jsonl", [
        {"body": "First  document\u00a0text.", "lang": "en"},
        {"body": "Second document text.", "name": "Two", "lang": "fr"},
    ])
    m = run_corpus(tmp_path, {"format": "jsonl", "path": str(path.parent), "text_field": "body",
                              "title_field": "name", "id_field": "id"})
    chunks = sorted(rows(m, "chunks"), key=lambda r: r["line"])
    assert [c["doc_id"] for c in chunks] == ["docs.jsonl:1", "docs.jsonl:2"]  # no id field: file:line
    assert chunks[0]["text"] == "First document text."  # NBSP and double space normalised
    assert chunks[1]["text"] == "Two\nSecond document text."
    assert json.loads(chunks[1]["metadata"]) == {"lang": "fr"}


def test_parquet_reader_keeps_row_numbers(ray_local, tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"_id": ["p1", "p2", "p3"], "title": ["A", None, "C"],
                             "text": ["alpha text", "beta text", ""]}), path)
    m = run_corpus(tmp_path, {"format": "parquet", "path": str(path)})
    assert m["outputs"]["counts"]["documents"] == 2 and m["outputs"]["counts"]["rejects"] == 1
    (rej,) = rows(m, "rejects")
    assert rej["doc_id"] == "p3" and rej["line"] == 3 and rej["reason"] == "empty text after normalisation"
    assert {c["text"] for c in rows(m, "chunks")} == {"A\nalpha text", "beta text"}


def test_files_reader_strips_html(ray_local, tmp_path):
    root = tmp_path / "files"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("Plain   text file.\n\n\n\nSecond paragraph.")
    (root / "b.md").write_text("# Heading\n\nSome *markdown*.")
    (root / "c.html").write_text("<html><head><style>p {color: red}</style><script>var x = 1;</script></head>"
                                 "<body><p>Fish &amp; chips</p><p>are good</p></body></html>")
    (root / "sub" / "d.txt").write_text("Nested file.")
    (root / "ignored.bin").write_bytes(b"\x00\x01")
    m = run_corpus(tmp_path, {"format": "files", "path": str(root)}, chunking={"title": False})
    texts = {r["doc_id"]: r["text"] for r in rows(m, "chunks")}
    assert set(texts) == {"a.txt", "b.md", "c.html", "d.txt"}
    assert texts["a.txt"] == "Plain text file.\n\nSecond paragraph."
    assert texts["c.html"] == "Fish & chips\n\nare good" or texts["c.html"] == "Fish & chips\nare good"
    assert "var x" not in texts["c.html"] and "color" not in texts["c.html"]


LONG = ("Deep sea vents host communities of tube worms, clams and bacteria that live on chemical energy "
        "instead of sunlight, and biologists study them to learn how life may have begun on the early earth.")


def test_exact_and_near_dedup(ray_local, tmp_path):
    docs = [
        {"_id": "orig", "title": "Vents", "text": LONG},
        {"_id": "copy", "title": "Vents", "text": LONG},  # exact copy
        {"_id": "near", "title": "Vents", "text": LONG.replace("biologists", "scientists")},  # one word changed
        {"_id": "other", "title": "Bread", "text": "Yeast ferments sugars in the dough and makes it rise."},
    ]
    path = write_jsonl(tmp_path / "c" / "corpus.jsonl", docs)
    m = run_corpus(tmp_path, {"format": "beir", "path": str(path.parent)})
    assert m["outputs"]["counts"]["duplicates"] == 1
    (dup,) = rows(m, "duplicates")
    assert dup["doc_id"] == "copy" and dup["duplicate_of"] == "orig" and dup["reason"].startswith("exact")

    m = run_corpus(tmp_path / "near", {"format": "beir", "path": str(path.parent)},
                   dedup={"near": {"enabled": True, "threshold": 0.7}})
    dups = {r["doc_id"]: r for r in rows(m, "duplicates")}
    assert set(dups) == {"copy", "near"}
    assert dups["near"]["duplicate_of"] == "orig" and dups["near"]["reason"].startswith("near")
    assert {c["doc_id"] for c in rows(m, "chunks")} == {"orig", "other"}


def test_rejects_accounting_with_a_corrupted_file(ray_local, tmp_path):
    good = [{"_id": f"g{i}", "title": "T", "text": f"good document number {i}"} for i in range(5)]
    raw = [
        b'{"_id": "bad-json", "text": "unterminated',  # line 6
        b'{"_id": "no-text", "title": "missing text"}',  # 7
        b'{"_id": "blank", "text": "   \\t  "}',  # 8
        b'{"_id": "bytes", "text": "caf\xe9 latin-1"}',  # 9: not UTF-8
        b"",  # 10: blank line, layout only
        b'["a", "list"]',  # 11
        b'{"title": "no id", "text": "orphan"}',  # 12
        b'{"_id": "g0", "text": "same id as line 1"}',  # 13
        b'{"_id": "num", "text": 42}',  # 14
        b'{"_id": "dup", "title": "T", "text": "good document number 3"}',  # 15: exact duplicate of g3
    ]
    path = write_jsonl(tmp_path / "c" / "corpus.jsonl", good, raw)
    m = run_corpus(tmp_path, {"format": "beir", "path": str(path.parent)})
    c = m["outputs"]["counts"]
    records = sum(1 for line in path.read_bytes().splitlines() if line.strip())  # counted independently
    assert records == 14
    assert c["input_records"] == records == c["documents"] + c["duplicates"] + c["rejects"]
    assert (c["documents"], c["duplicates"], c["rejects"]) == (5, 1, 8)
    reasons = {r["line"]: r["reason"] for r in rows(m, "rejects")}
    assert reasons[6].startswith("invalid JSON")
    assert reasons[7] == "missing field 'text'"
    assert reasons[8] == "empty text after normalisation"
    assert reasons[9].startswith("undecodable bytes")
    assert reasons[11] == "record is a list, not an object"
    assert reasons[12] == "missing field '_id'"
    assert reasons[13].startswith("duplicate id 'g0'")
    assert reasons[14] == "field 'text' is a int, not a string"
    assert all(r["source"] == str(path) for r in rows(m, "rejects"))


def test_token_windows_overlap_and_word_boundaries():
    # 10 words of 3 tokens each
    word_ids = [w for w in range(10) for _ in range(3)]
    windows = token_windows(word_ids, 30, budget=8, overlap=2)
    assert all(e - s <= 8 for s, e in windows)
    assert windows[0] == (0, 6)  # 8 would split word 2: backs off to its start
    for (s0, e0), (s1, e1) in zip(windows, windows[1:]):
        assert s1 < e0  # overlap
        assert s1 % 3 == 0 and (e0 % 3 == 0 or e0 == 30)  # whole words
    assert windows[-1][1] == 30
    assert token_windows(word_ids, 30, budget=40, overlap=2) == [(0, 30)]


def test_chunker_with_the_bundled_tokenizer():
    chunk = Chunk(ChunkingConfig(max_tokens=48, overlap=12), "bundled:all-minilm-l6-v2")
    words = [f"word{i}" for i in range(120)]
    pieces = chunk.split("Title", " ".join(words))
    assert len(pieces) > 3
    bodies = [text.split("\n", 1)[1] for text, _ in pieces]
    assert all(text.startswith("Title\n") for text, _ in pieces)
    assert all(n <= 48 for _, n in pieces)
    # counted again by transformers' own tokenizer: the chunker reads tokenizer.json without it
    from transformers import AutoTokenizer

    from ragworks.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("bundled:all-minilm-l6-v2"))
    assert chunk.tok is None and chunk.backend is not None
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) == n <= 48 for t, n in pieces)
    for a, b in zip(bodies, bodies[1:]):
        assert b.split()[0] in a.split()  # the next chunk starts inside this one
    seen = [w for b in bodies for w in b.split()]
    assert set(seen) == set(words)  # nothing lost, no word cut in half
    assert chunk.split(None, "short text") == [("short text", 2)]


def _letters(rng, n: int) -> str:
    return " ".join("".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=rng.integers(3, 9))) for _ in range(n))


class Crash(Exception):
    pass


class CrashAfter(Checkpoints):
    """Checkpoints that record which passes ran, and stop the stage (as a lost driver would) after one."""

    def __init__(self, folder, crash_after: str | None = None):
        super().__init__(folder)
        self.crash_after, self.ran = crash_after, []

    def __call__(self, name, ds, schema):
        if not self.done(name):
            self.ran.append(name)
        out = super().__call__(name, ds, schema)
        if name == self.crash_after:
            raise Crash(name)
        return out


def test_partitioned_dedup_decides_exactly_as_one_task(ray_local, tmp_path):
    """The hash-partitioned passes (label propagation included) and the one-task path reach the same
    decisions on rows that arrive shuffled across blocks, and the earliest copy by (file, line) is kept.
    The passes go through on-disk checkpoints: a run stopped after the exact-hash pass resumes with the
    passes after it only, and decides the same."""
    import numpy as np
    import pytest
    import ray

    from ragworks.corpus.config import DedupConfig
    from ragworks.storage import Folder
    from ragworks.corpus.dedup import POS_STRIDE, deduplicate
    from ragworks.corpus.records import to_table

    rng = np.random.default_rng(7)
    base = [_letters(rng, 200) for _ in range(120)]
    words = base[0].split()
    docs = [{"doc_id": f"d{i}", "text": t} for i, t in enumerate(base)]
    docs += [{"doc_id": "d5", "text": "a second record with the id d5"},  # repeated id
             {"doc_id": "x1", "text": base[1]}, {"doc_id": "x2", "text": base[1]},  # two exact copies of d1
             {"doc_id": "n1", "text": " ".join(words[:30] + ["zzzz"] + words[31:])},  # near copy of d0 (J 0.95)
             {"doc_id": "n2", "text": " ".join(words[:50] + ["yyyy"] + words[51:]) + " qqqq"},  # near d0 (J 0.93)
             {"doc_id": "far", "text": " ".join(words[:100]) + " " + _letters(rng, 100)},  # half of d0: not near
             {"doc_id": "pad", "text": _letters(rng, 50)},
             {"doc_id": "c2", "text": base[2]}]  # row 127: file 0, line 64; d2 is row 2: file 1, line 2
    # odd rows are in file 0, even rows in file 1: "earliest" is by (file, line), not by row or arrival
    rows = [{**d, "kind": "doc", "source": f"f{1 - i % 2}", "line": i // 2 + 1} for i, d in enumerate(docs)]
    table = to_table(rows)
    pos = [(1 - i % 2) * POS_STRIDE + (i // 2 + 1) for i in range(len(rows))]
    table = table.append_column("pos", pa.array(pos, pa.int64())).take(pa.array(rng.permutation(len(rows))))
    ds = ray.data.from_arrow([table.slice(i, 20) for i in range(0, table.num_rows, 20)])

    def decide(max_rows: int, keep=None) -> dict:
        cfg = DedupConfig(near={"enabled": True}, max_rows_in_one_task=max_rows, partitions=3)
        out, plan = deduplicate(ds, cfg, *([keep] if keep else []))
        got = {(r["doc_id"], r["line"]): (r["kind"], r["duplicate_of"], r["reason"])
               for r in out.take_all() if r["kind"] != "doc"}
        return got, plan

    one, plan1 = decide(10**6)
    with pytest.raises(Crash):
        decide(0, CrashAfter(Folder(tmp_path / "ck"), crash_after="exact"))
    resumed = CrashAfter(Folder(tmp_path / "ck"))
    part, plan2 = decide(0, resumed)
    assert resumed.ran == ["edges", "symmetric"] + [f"labels-{i}" for i in range(len(resumed.ran) - 3)] + ["decisions"]
    assert (plan1["partitions"], plan2["partitions"]) == (1, 3)
    assert one == part
    assert one == {
        ("d5", 61): ("reject", None, "duplicate id 'd5' (an earlier record has the same id)"),  # row 120, file 1
        ("x1", 61): ("duplicate", "d1", "exact duplicate of d1"),
        ("x2", 62): ("duplicate", "d1", "exact duplicate of d1"),
        ("d2", 2): ("duplicate", "c2", "exact duplicate of c2"),  # the copy in file 0 is the earlier
        ("d0", 1): ("duplicate", "n1", "near duplicate of n1"),  # d0 is in file 1, its near copy n1 in file 0
        ("n2", 63): ("duplicate", "n1", "near duplicate of n1")}


def test_limit_keeps_the_first_records_by_file_and_line(ray_local, tmp_path):
    """`limit` is the first N records in (file, line) order, however Ray schedules the two files' reads."""
    for name in ("a", "b"):
        write_jsonl(tmp_path / "in" / f"{name}.jsonl",
                    [{"id": f"{name}{i}", "text": f"record {i} of file {name} " + "word " * (40 * i)} for i in range(5)])
    m = run_corpus(tmp_path, {"format": "jsonl", "path": str(tmp_path / "in"), "id_field": "id", "limit": 7})
    assert m["outputs"]["counts"]["input_records"] == 7
    assert {c["doc_id"] for c in rows(m, "chunks")} == {"a0", "a1", "a2", "a3", "a4", "b0", "b1"}

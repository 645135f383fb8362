"""A live corpus at scale: a 1% delta applied in place against a full rebuild over the same final input (issue 33).

Why: a corpus of millions of documents changes every day; re-running every stage for a 1% change is the whole
bill again. This script builds N seeded documents (benchmarks/corpus_scale.py's generator: Zipf words, 2% exact
and 5% near copies), runs the corpus and index stages once, then changes the input by 1%: N/100 documents
added in a new file (a tenth of them near copies of existing documents), N/1000 edited and N/1000 deleted,
both drawn from 2% of the part files (a docs site or a ticket export changes in a few files, not in all).
Then, in one run on one machine:

- `delta`: `ragworks run` on the first workdir (an update in place);
- `full`: `ragworks run` on a fresh workdir over the same final input (the rebuild the update stands for);
- `noop`: `ragworks run` on the first workdir again, nothing changed.

It prints `delta_ratio` (delta wall seconds / full wall seconds; goal <= 0.05), `differences` (rows of (chunk
id, chunk hash) and dedup decisions (doc_id, kind, duplicate of) that differ between the updated and the
rebuilt outputs; goal 0), `top10_agreement` (mean overlap of the top-10 chunk ids of 300 queries, each a
sentence of a random kept document, in dense, full-text and hybrid search, updated index against rebuilt;
goal >= 0.99; with it, `dense_exact`, the same overlap with exact vector search on both, and each ANN
index's recall@10 against exact search, since two approximate indexes trained apart differ on near-ties),
`noop_s` and whether the table version stayed, and the driver's peak RSS of the delta run
against the fresh one's (goal <= 1.25x). The index uses the static embedder (model2vec, distilled from the
bundled MiniLM) so a million documents embed in minutes on 2 cores, and 512-token chunks (these documents
of made-up words take 3-4 wordpieces a word: about 1.6 chunks each); every stage's wall time includes its
start-up, as a user would see it.

    python benchmarks/delta_ingest.py --docs 100000
    python benchmarks/delta_ingest.py --docs 1000000 --parts 1000
    python benchmarks/delta_ingest.py --docs 1000000 --parts 1000 --reuse-first   # after a cut-short run
    python benchmarks/delta_ingest.py --docs 300000 --ann '{"index_type": "IVF_SQ", "num_partitions": 256, "nprobes": 96}'

A first build of a million documents takes an hour or more on 2 cores; `--reuse-first` keeps one that finished
(its input, its workdir and `first.json`) and goes on from the change, which it refuses once applied.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_scale import ENV, ROOT, generate, measure, near_copy, render  # noqa: E402


ANN: dict = {}  # --ann: the index's ann settings, beside the defaults


def spec(input_dir: Path) -> dict:
    return {"name": "delta-ingest", "ray": {"num_cpus": 2},
            "corpus": {"source": {"format": "jsonl", "path": str(input_dir), "id_field": "id"},
                       "dedup": {"exact": True, "near": {"enabled": True, "threshold": 0.9}},
                       "chunking": {"max_tokens": 512, "overlap": 32}},
            "index": {"embedder": "static", "concurrency": [1, 2], **({"ann": ANN} if ANN else {})}}


def ragworks(input_dir: Path, workdir: Path, log: Path) -> dict:
    import yaml

    job = workdir.parent / f"{workdir.name}.yaml"
    job.write_text(yaml.safe_dump(spec(input_dir)))
    command = [sys.executable, "-m", "ragworks.cli", "run", str(job), "--workdir", str(workdir)]
    return measure(command, {**ENV, "PYTHONPATH": str(ROOT / "platform")}, log, is_worker=lambda n: n.startswith("ray::"))


def change(input_dir: Path, n: int, parts: int, seed: int) -> dict:
    """The 1% delta, written into the input folder; returns what it did."""
    rng = random.Random(seed + 1)
    files = sorted(input_dir.glob("part-*.jsonl"))
    touched = rng.sample(files, max(1, round(0.02 * len(files))))
    rows = {f: [json.loads(line) for line in f.read_text().splitlines()] for f in touched}
    pool = [(f, i) for f in touched for i in range(len(rows[f]))]
    rng.shuffle(pool)
    k = max(1, n // 1000)
    edited, deleted = pool[:k], set(pool[k: 2 * k])
    vocab = sorted({w for f in touched for r in rows[f][:50] for w in r["text"].replace(".", "").lower().split()})
    for f, i in edited:
        words = rows[f][i]["text"].replace(".", "").lower().split()
        rows[f][i]["text"] = render([rng.choice(vocab) for _ in words[: len(words) // 2]] + words[len(words) // 2:], rng)
    for f in touched:
        kept = [r for i, r in enumerate(rows[f]) if (f, i) not in deleted]
        f.write_text("".join(json.dumps(r) + "\n" for r in kept))
    added, near = max(1, n // 100), max(1, n // 1000)
    sources = [rows[f][i] for f, i in pool[2 * k: 2 * k + near]]
    new = []
    for j in range(added):
        if j < near:
            src = sources[j % len(sources)]
            words = src["text"].replace(".", "").lower().split()
            new.append({"id": f"new{j:07d}", "title": src["title"],
                        "text": render(near_copy(words, 0.95, rng, lambda: rng.choice(vocab)), rng)})
        else:
            new.append({"id": f"new{j:07d}", "title": f"New {j}",
                        "text": render([rng.choice(vocab) for _ in range(rng.randint(100, 140))], rng)})
    (input_dir / "part-new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new))
    return {"files_touched": len(touched) + 1, "added": added, "near_copies_added": near, "edited": k, "deleted": k}


def outputs(workdir: Path):
    from ragworks.stage import outputs_at

    return outputs_at(workdir / "corpus"), outputs_at(workdir / "index")


def differences(a: Path, b: Path) -> dict:
    """Rows of (chunk id, chunk hash) in one updated/rebuilt index and not the other; the same for decisions."""
    import lance
    import pyarrow.dataset as pds

    def chunks(workdir: Path) -> set:
        _, index = outputs(workdir)
        t = lance.dataset(f"{index.lancedb}/{index.table}.lance", version=index.version).to_table(
            columns=["id", "chunk_hash"])
        return set(zip(t["id"].to_pylist(), t["chunk_hash"].to_pylist()))

    def decisions(workdir: Path) -> set:
        corpus, _ = outputs(workdir)
        out = set()
        for folder in (corpus.duplicates, corpus.rejects):
            if any(Path(folder).rglob("*.parquet")):
                t = pds.dataset(folder, format="parquet").to_table(columns=["doc_id", "kind", "duplicate_of"])
                out |= set(zip(t["doc_id"].to_pylist(), t["kind"].to_pylist(), t["duplicate_of"].to_pylist()))
        return out

    ca, cb, da, db = chunks(a), chunks(b), decisions(a), decisions(b)
    return {"chunks": len(ca ^ cb), "decisions": len(da ^ db), "rows_updated": len(ca), "rows_rebuilt": len(cb)}


def query_texts(table, n: int, seed: int) -> list[str]:
    """`n` queries, each 12 words of a sentence of a random chunk among the table's first 20,000 rows."""
    rows = table.search().select(["text"]).limit(20_000).to_list()
    rng = random.Random(seed)
    return [" ".join(r["text"].split(". ")[min(1, r["text"].count(". "))].split()[:12]) for r in rng.sample(rows, n)]


def mean_overlap(found: list[set], truth: list[set]) -> float:
    """The mean share of each top 10 in `truth` that the same query's top 10 in `found` holds: recall@10 when
    `truth` is exact search, top-10 agreement when it is another index."""
    return round(sum(len(f & t) / 10 for f, t in zip(found, truth)) / len(truth), 4)


def agreement(a: Path, b: Path, queries: int, seed: int) -> dict:
    import ray

    from ragworks.index import open_index

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    left, right = open_index(a / "index"), open_index(b / "index")
    texts = query_texts(right.table, queries, seed)
    vectors = right.embed(texts)
    out = {}
    for mode in ("dense", "fulltext", "hybrid"):
        out[mode] = mean_overlap([{h["id"] for h in left.search(q, mode, 10, vector=v)} for q, v in zip(texts, vectors)],
                                 [{h["id"] for h in right.search(q, mode, 10, vector=v)} for q, v in zip(texts, vectors)])

    def exact(searcher, v) -> set:  # every row compared: what an ANN index approximates
        return {h["id"] for h in searcher.dense(v, 10, columns=["id"], exact=True)}

    def ann(searcher, v) -> set:
        return {h["id"] for h in searcher.dense(v, 10, columns=["id"])}

    # Two approximate indexes trained apart disagree on near-ties whatever their rows: the rows are the same when
    # exact search agrees, and the updated index is as good as a fresh one when its recall against exact is
    lefts, rights = [exact(left, v) for v in vectors], [exact(right, v) for v in vectors]
    out["dense_exact"] = mean_overlap(lefts, rights)
    out["ann_recall_at_10"] = {"updated": mean_overlap([ann(left, v) for v in vectors], lefts),
                               "rebuilt": mean_overlap([ann(right, v) for v in vectors], rights)}
    ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--parts", type=int, default=None, help="part files (default: one per 1,000 documents)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "delta-ingest")
    parser.add_argument("--reuse-first", action="store_true",
                        help="go on from a finished first build under --workdir instead of starting over")
    parser.add_argument("--ann", type=json.loads, default={},
                        help='index.ann settings as JSON, e.g. \'{"index_type": "IVF_SQ", "num_partitions": 256, '
                             '"nprobes": 96}\' (the same on the first build, the update and the rebuild)')
    args = parser.parse_args()
    ANN.update(args.ann)
    parts = args.parts or max(8, args.docs // 1000)
    root = args.workdir / f"n{args.docs}"
    inputs = root / "input"
    if args.reuse_first:
        if not (root / "first.json").exists() or (root / "change.json").exists():
            sys.exit(f"--reuse-first: {root} has no finished first build (first.json), or its change is applied "
                     "already (change.json); run without --reuse-first")
        first = json.loads((root / "first.json").read_text())
    else:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        generate(args.docs, args.seed, parts, root)
        first = ragworks(inputs, root / "live", root / "first.log")
        (root / "first.json").write_text(json.dumps(first))
    version = outputs(root / "live")[1].version
    did = change(inputs, args.docs, parts, args.seed)
    (root / "change.json").write_text(json.dumps(did))
    delta = ragworks(inputs, root / "live", root / "delta.log")
    full = ragworks(inputs, root / "rebuilt", root / "full.log")
    after = outputs(root / "live")[1].version
    noop = ragworks(inputs, root / "live", root / "noop.log")
    stayed = outputs(root / "live")[1].version == after
    diff = differences(root / "live", root / "rebuilt")
    top10 = agreement(root / "live", root / "rebuilt", args.queries, args.seed)
    corpus, _ = outputs(root / "live")
    result = {
        "docs": args.docs, "parts": parts, "change": did, "delta_counts": corpus.delta.counts if corpus.delta else None,
        "first_s": first["seconds"] and round(first["seconds"], 1), "delta_s": round(delta["seconds"], 1), "full_s": round(full["seconds"], 1),
        "delta_ratio": round(delta["seconds"] / full["seconds"], 4),
        "differences": diff["chunks"] + diff["decisions"], "difference_detail": diff,
        "top10_agreement": top10, "noop_s": round(noop["seconds"], 1), "noop_version_stayed": stayed,
        "table_versions": [version, after],
        "driver_mb": {"delta": round(delta["driver_mb"] or 0), "fresh": round(full["driver_mb"] or 0),
                      "ratio": round((delta["driver_mb"] or 0) / (full["driver_mb"] or 1), 3)},
    }
    (root / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

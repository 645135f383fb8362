"""What the vector index's search settings buy: recall@10 against exact search, LanceDB's defaults against ragworks's.

Why: an IVF_HNSW_SQ search with LanceDB's defaults visits 1.5 x limit HNSW candidates and ranks them by 8-bit
codes; on a 100k-row table that found under half of the exact top 10, so dense and hybrid answers were
mostly not the nearest chunks. ragworks searches with `ann.ef` candidates and re-ranks `ann.refine_factor` x
limit of them by their full vectors (LanceDB's `ef` and `refine_factor`). This script builds one table of N
seeded documents (benchmarks/corpus_scale.py's generator, embedded with the static embedder), the index the
index stage builds (`index.ann_config` from the default `IndexConfig`), and asks the same queries, each a
sentence of a random document, with both settings through the same `Searcher`. It prints each one's recall@10
against exact search and ms a query, and the ratios (ragworks / LanceDB's defaults).

    python benchmarks/ann_recall.py --docs 100000
    python benchmarks/ann_recall.py --docs 1000000 --try 64:1000:10 --try 128:2000:20   # more settings, same table

Each `--try NPROBES:EF:REFINE_FACTOR` adds a row with those search settings (the table and its index stay).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_scale import ROOT, generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "ann-recall")
    parser.add_argument("--try", dest="tries", action="append", default=[], metavar="NPROBES:EF:REFINE",
                        help="another search setting to measure, e.g. 64:1000:10")
    args = parser.parse_args()

    import lancedb
    import pyarrow as pa

    from ragworks.index.config import IndexConfig
    from ragworks.index.embed import load_embedder, vector_array
    from ragworks.index.index import ann_config
    from ragworks.index.search import Searcher

    root = args.workdir / f"n{args.docs}"
    shutil.rmtree(root, ignore_errors=True)
    generate(args.docs, args.seed, max(8, args.docs // 1000), root)
    rows = [json.loads(line) for f in sorted((root / "input").glob("*.jsonl")) for line in f.read_text().splitlines()]
    model, cfg = load_embedder("static"), IndexConfig()
    vectors = model.encode([r["text"] for r in rows], batch_size=1024)
    db = lancedb.connect(str(root / "db"))
    table = db.create_table("chunks", pa.table({"id": [r["id"] for r in rows], "vector": vector_array(vectors)}))
    start = time.perf_counter()
    table.create_index("vector", config=ann_config(cfg))
    build_s = time.perf_counter() - start

    rng = random.Random(args.seed)
    queries = model.encode([rng.choice(rows)["text"].split(".")[0] for _ in range(args.queries)])
    settings = {"lancedb_defaults": {"nprobes": cfg.ann.nprobes, "ef": None, "refine_factor": None},
                "ragworks": {"nprobes": cfg.ann.nprobes, "ef": cfg.ann.ef, "refine_factor": cfg.ann.refine_factor}}
    for knobs in args.tries:
        nprobes, ef, refine = (int(x) for x in knobs.split(":"))
        settings[f"try {knobs}"] = {"nprobes": nprobes, "ef": ef, "refine_factor": refine}
    result = {"docs": args.docs, "index": cfg.ann.index_type, "nprobes": cfg.ann.nprobes, "build_s": round(build_s, 1)}
    everything = Searcher(root / "db", metric=cfg.metric, model=model)
    exact = [{h["id"] for h in everything.dense(q, 10, columns=["id"], exact=True)} for q in queries]
    for name, knobs in settings.items():
        searcher = Searcher(root / "db", metric=cfg.metric, model=model, **knobs)
        start = time.perf_counter()
        found = [{h["id"] for h in searcher.dense(q, 10, columns=["id"])} for q in queries]
        ms = (time.perf_counter() - start) / len(queries) * 1000
        recall = sum(len(f & e) / 10 for f, e in zip(found, exact)) / len(queries)
        result[name] = {**knobs, "ef": searcher.ef, "recall_at_10": round(recall, 4), "ms_per_query": round(ms, 2)}
    ours, theirs = result["ragworks"], result["lancedb_defaults"]
    result["recall_ratio"] = round(ours["recall_at_10"] / theirs["recall_at_10"], 3)
    result["latency_ratio"] = round(ours["ms_per_query"] / theirs["ms_per_query"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

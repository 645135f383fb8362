"""How should hybrid search fuse dense and full-text results? RRF against a linear combination.

Scores a finished job's indexes with LanceDB's two hybrid rerankers, reciprocal rank
fusion (k=60) and the linear combination of min-max normalized scores at several
vector weights, on two query sets:

- synthetic: claims the job's `filters` stage kept, each judged by the chunk it was
  written from. No human label: this is the set a user without qrels can choose on.
  Only the base index is scored on it (the tuned retriever trained on these claims).
- judged: a BEIR split's queries and qrels (SciFact test), to see if the choice holds.

Prints nDCG@10 per fusion and the ratio of each to RRF, the baseline.

    python benchmarks/hybrid_fusion.py --workdir runs/scifact [--data ../shared/data/scifact]
"""

import argparse
import os
import sys
import zlib
from pathlib import Path

os.environ.setdefault("LANCEDB_LOG", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
import pyarrow.dataset as pads  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from ragworks.beir import load_qrels, load_queries  # noqa: E402
from ragworks.ranking_metrics import evaluate_run  # noqa: E402
from ragworks.evaluate.retrieval import rank_by  # noqa: E402
from ragworks.index import open_index  # noqa: E402
from ragworks.runtime import limit_torch_threads  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--workdir", default="runs/scifact", help="a finished job's workdir (index, filters, optionally index_tuned)")
ap.add_argument("--data", default="../shared/data/scifact", help="BEIR folder with the judged queries")
ap.add_argument("--split", default="test")
ap.add_argument("--synthetic", type=int, default=500, help="kept synthetic claims scored (drawn by a hash of the text)")
ap.add_argument("--candidates", type=int, default=200, help="results per side before fusion, as `evaluate` fetches")
ap.add_argument("--weights", default="0.3,0.4,0.5,0.6,0.7", help="vector weights of the linear combination")
args = ap.parse_args()
limit_torch_threads()
workdir = Path(args.workdir)

qrels = load_qrels(args.data, args.split)
judged = load_queries(args.data, set(qrels))
kept = pads.dataset(workdir / "filters" / "queries" / "status=kept").to_table(columns=["query", "doc_id"]).to_pylist()
kept = sorted(kept, key=lambda r: zlib.crc32(r["query"].encode()))[: args.synthetic]
sets = {"judged": ({q: judged[q] for q in sorted(judged)}, qrels),
        "synthetic": ({str(i): r["query"] for i, r in enumerate(kept)}, {str(i): {r["doc_id"]: 1} for i, r in enumerate(kept)})}
fusions = [("rrf", {"fusion": "rrf"})] + [(f"linear {w}", {"fusion": "linear", "vector_weight": float(w)})
                                          for w in args.weights.split(",")]

console = Console()
table = Table(title=f"hybrid nDCG@10 by fusion ({workdir}); ratio: against RRF")
table.add_column("index, queries")
for name, _ in fusions:
    table.add_column(name, justify="right")
for stage in ("index", "index_tuned"):
    if not (workdir / stage / "manifest.json").exists():
        continue
    for set_name, (queries, judgements) in sets.items():
        if stage == "index_tuned" and set_name == "synthetic":
            continue
        ids, texts = list(queries), list(queries.values())
        vectors = open_index(workdir / stage).embed(texts)
        scores = []
        for _, how in fusions:
            searcher = open_index(workdir / stage, candidates=args.candidates, **how)
            run = {q: rank_by(searcher.search(t, mode="hybrid", k=args.candidates, vector=v))
                   for q, t, v in zip(ids, texts, vectors)}
            scores.append(evaluate_run(run, judgements)["ndcg@10"])
        table.add_row(f"{stage}, {set_name} ({len(ids)})", *(f"{s:.4f} ({s / scores[0]:.3f})" for s in scores))
        console.print(f"{stage}, {set_name}: " + "  ".join(f"{n} {s:.4f}" for (n, _), s in zip(fusions, scores)))
console.print(table)

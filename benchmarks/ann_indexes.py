"""Which vector index lets an updated table agree with a rebuilt one (issue 33): each index kind and size on the
two tables of a finished `delta_ingest.py` run, built the way each got its index there.

Why: delta_ingest.py's dense top-10 agreement between the updated and the rebuilt index is bounded by the two
indexes' recall (two at recall r agree on at least 2r - 1), and with LanceDB's IVF_HNSW_SQ the recall of its
chunk queries levelled off near 0.99 whatever `ef` (docs/live-corpus.md). Here, for each `--try`:

- rebuilt: the rebuilt table with the index built over all its rows;
- updated: the updated table as the first build left it, the index built there, then the delta applied as
  `ragworks run` applies it (the replaced documents' chunks deleted, the new chunks appended, the index folded
  with `optimize_indices`), so both tables end with the same rows;

then the same queries as delta_ingest.py (12 words of a chunk's sentence) search both through ragworks's
`Searcher`. It prints, per setting, the build seconds, recall@10 of each against exact search, the top-10
agreement of the two, and ms a query; `agreement_ratio` is the best agreement over LanceDB's IVF_HNSW_SQ one.

    python benchmarks/delta_ingest.py --docs 300000 --workdir runs/delta-ingest
    python benchmarks/ann_indexes.py --workdir runs/delta-ingest/n300000 --try IVF_HNSW_SQ::1 \\
        --try IVF_FLAT:256:64 --try IVF_SQ:256:96 --try IVF_HNSW_SQ:8:8

A `--try` is KIND:PARTITIONS:NPROBES (PARTITIONS empty: LanceDB's); HNSW kinds search with `ef: auto`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from delta_ingest import mean_overlap, query_texts  # noqa: E402


def build(kind: str, partitions: int | None, src: Path, dst: Path, version: int | None = None, final: Path | None = None):
    """A copy of the table at `src` (at `version`), its vector index built; with `final`, then the delta to the
    rows of the table at `final` applied and the index folded, as an update does (index/update.py)."""
    import lancedb
    import pyarrow as pa
    import pyarrow.compute as pc

    from ragworks.index.config import IndexConfig
    from ragworks.index.index import ann_config

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    table = lancedb.connect(str(dst)).open_table("chunks")
    if version is not None:
        table.checkout(version)
        table.restore()
    started = time.monotonic()
    table.create_index("vector", config=ann_config(IndexConfig(ann={"index_type": kind, "num_partitions": partitions})),
                       replace=True)
    seconds = time.monotonic() - started
    if final is not None:
        rows = lancedb.connect(str(final)).open_table("chunks").to_lance().to_table()
        now = table.to_lance().to_table(columns=["id", "chunk_hash"])
        old, new = (dict(zip(t["id"].to_pylist(), t["chunk_hash"].to_pylist())) for t in (now, rows))
        gone, added = [i for i, h in old.items() if new.get(i) != h], [i for i, h in new.items() if old.get(i) != h]
        for at in range(0, len(gone), 2000):
            table.delete("id IN (" + ",".join("'" + i.replace("'", "''") + "'" for i in gone[at:at + 2000]) + ")")
        table.add(rows.filter(pc.is_in(rows["id"], value_set=pa.array(added))))
        ds = table.to_lance()
        ds.optimize.optimize_indices(index_names=[i.name for i in table.list_indices() if i.columns == ["vector"]])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="a finished delta_ingest.py run (its nN folder)")
    parser.add_argument("--try", dest="tries", action="append", required=True, help="KIND:PARTITIONS:NPROBES")
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scratch", type=Path, default=None, help="where the copies go (default: WORKDIR/ann-indexes)")
    args = parser.parse_args()
    from ragworks.index.search import Searcher
    from ragworks.stage import outputs_at

    result = json.loads((args.workdir / "result.json").read_text())
    live, rebuilt = (outputs_at(args.workdir / name / "index") for name in ("live", "rebuilt"))
    scratch = args.scratch or args.workdir / "ann-indexes"
    base = Searcher(rebuilt.lancedb, rebuilt.table, rebuilt.embedder, rebuilt.metric, version=rebuilt.version)
    texts = query_texts(base.table, args.queries, args.seed)
    vectors = base.embed(texts)
    exact = [{h["id"] for h in base.dense(v, 10, columns=["id"], exact=True)} for v in vectors]
    rows = []
    for knob in args.tries:
        kind, partitions, nprobes = knob.split(":")
        partitions = int(partitions) if partitions else None
        seconds = {"rebuilt": build(kind, partitions, Path(rebuilt.lancedb), scratch / "rebuilt"),
                   "updated": build(kind, partitions, Path(live.lancedb), scratch / "updated",
                                    version=result["table_versions"][0], final=Path(live.lancedb))}
        found, ms = {}, {}
        for name in ("rebuilt", "updated"):
            s = Searcher(scratch / name, rebuilt.table, rebuilt.embedder, rebuilt.metric, nprobes=int(nprobes),
                         ef="auto" if "HNSW" in kind else None, refine_factor=10, model=base.model)
            assert s.rows == base.rows, (name, s.rows, base.rows)
            started = time.monotonic()
            found[name] = [{h["id"] for h in s.dense(v, 10, columns=["id"])} for v in vectors]
            ms[name] = round((time.monotonic() - started) / len(vectors) * 1000, 1)
        row = {"try": knob, "build_s": {k: round(v, 1) for k, v in seconds.items()},
               "recall_at_10": {n: mean_overlap(found[n], exact) for n in found},
               "agreement": mean_overlap(found["updated"], found["rebuilt"]), "ms_per_query": ms}
        print(json.dumps(row), flush=True)
        rows.append(row)
    shutil.rmtree(scratch, ignore_errors=True)
    hnsw = [r["agreement"] for r in rows if r["try"].startswith("IVF_HNSW_SQ::")]
    best = max(r["agreement"] for r in rows)
    print(json.dumps({"rows": base.rows, "queries": len(vectors), "best_agreement": best,
                      "agreement_ratio": round(best / hnsw[0], 4) if hnsw else None}))


if __name__ == "__main__":
    main()

"""Stage `negatives`: hard negatives per query, mined from the index.

Never a positive (the query's own chunk or any chunk of its document), never
from the top `skip_top` ranks, and never a candidate whose similarity to the
query is above `max_score_ratio` of the positive's: at scale such "negatives"
are mostly unlabelled positives. Batched, so memory does not grow with the corpus.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

from ..incremental import read_columns
from ..index import IndexActor, unit
from ..runtime import actor_pool
from . import NegativesOutputs
from .config import NegativesConfig


class MineNegatives(IndexActor):
    """Ray Data callable class: searcher and embedder loaded once per actor."""

    def mine(self, query: str, qv: np.ndarray, pos_id: str, pos_doc: str, pos_sim: float) -> tuple[list, list, list]:
        c = self.cfg
        hits = self.searcher.search(query, mode=c.mode, k=c.candidates + c.skip_top, vector=qv, with_vectors=True)
        ids, texts, sims = [], [], []
        for rank, h in enumerate(hits):
            if rank < c.skip_top or h["id"] == pos_id or h["doc_id"] == pos_doc:
                continue
            sim = float(unit(h["vector"]) @ qv)
            if sim > c.max_score_ratio * pos_sim:  # false-negative guard
                continue
            ids.append(h["id"]), texts.append(h["text"]), sims.append(sim)
            if len(ids) == c.per_query:
                break
        return ids, texts, sims

    def __call__(self, batch: pa.Table) -> pa.Table:
        queries, texts = batch["query"].to_pylist(), batch["text"].to_pylist()
        qv = unit(self.searcher.embed(queries))
        pv = unit(self.searcher.embed(texts))
        pos_sims = np.sum(qv * pv, axis=1)
        neg_ids, neg_texts, neg_sims = [], [], []
        for i, (q, pid, pdoc) in enumerate(zip(queries, batch["id"].to_pylist(), batch["doc_id"].to_pylist())):
            a, b, s = self.mine(q, qv[i], pid, pdoc, float(pos_sims[i]))
            neg_ids.append(a), neg_texts.append(b), neg_sims.append(s)
        return pa.table({
            "key": batch["key"], "query": batch["query"], "positive_id": batch["id"], "positive_doc_id": batch["doc_id"],
            "positive": batch["text"], "positive_score": pa.array(pos_sims, pa.float32()),
            "negative_ids": pa.array(neg_ids, pa.list_(pa.string())),
            "negatives": pa.array(neg_texts, pa.list_(pa.string())),
            "negative_scores": pa.array(neg_sims, pa.list_(pa.float32())),
        })


def run(cfg: NegativesConfig, ctx) -> NegativesOutputs:
    ds = ray.data.read_parquet(ctx.output("filters").kept).select_columns(["key", "id", "doc_id", "text", "query"])
    ds = ds.map_batches(MineNegatives, fn_constructor_args=(ctx.output("index"), cfg), batch_size=cfg.batch_size,
                        batch_format="pyarrow", **actor_pool(cfg.concurrency, 1, resources=cfg.resources))
    out = ctx.stage_dir / "pairs"
    ds.write_parquet(str(out))
    rows = short = 0
    for _, t in read_columns(out, ["negative_ids"]):
        n = t.column("negative_ids").to_pylist()
        rows += len(n)
        short += sum(1 for x in n if len(x) < cfg.per_query)
    ctx.console.print(f"negatives: {rows:,} queries, {cfg.per_query} hard negatives each "
                      f"({short:,} with fewer: the guard left too few candidates)")
    return NegativesOutputs(pairs=str(out), counts={"queries": rows, "short": short})

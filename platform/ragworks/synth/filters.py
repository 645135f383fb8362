"""Stage `filters`: keep the synthetic queries worth training on, and count why others went.

Filters run in order; a row is dropped by the first one it fails, named in
`dropped_by`, and kept aside in `dropped/` rather than deleted.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from ..incremental import read_columns
from ..index import IndexActor, unit
from ..ordering import first_of_key, per_key
from ..progress import table as progress_table
from ..runtime import actor_pool
from . import FiltersOutputs
from .config import FiltersConfig
from .parse import clean_query

ORDER = ("cleanup", "length", "dedup", "consistency", "min_score")


def rule_filters(batch: pa.Table, cfg: FiltersConfig) -> pa.Table:
    """Clean-up and length bounds: per row, no state."""
    queries, dropped = [], []
    for q in batch["query"].to_pylist():
        reason = None
        if cfg.cleanup:
            q = clean_query(q or "")
            if not q:
                reason = "cleanup"
        n = len((q or "").split())
        if reason is None and not (cfg.length.min_words <= n <= cfg.length.max_words):
            reason = "length"
        queries.append(q)
        dropped.append(reason)
    batch = batch.set_column(batch.schema.get_field_index("query"), "query", pa.array(queries, pa.string()))
    return batch.append_column("dropped_by", pa.array(dropped, pa.string()))


def with_normalised_query(batch: pa.Table) -> pa.Table:
    """The dedup key: the case-folded query with its spaces collapsed; null for rows already dropped."""
    norm = [" ".join(q.lower().split()) if d is None else None
            for q, d in zip(batch["query"].to_pylist(), batch["dropped_by"].to_pylist())]
    return batch.append_column("norm", pa.array(norm, pa.string()))


def drop_repeats(batch: pa.Table) -> pa.Table:
    """Every copy of a query but the first by `key` is dropped as `dedup`; `batch` holds all copies of its
    queries (one partition of a hash shuffle on `norm`), so the same copy wins wherever the rows ran."""
    batch, first = first_of_key(batch, "norm", "key")
    later = pa.array((first != np.arange(batch.num_rows)) & batch["norm"].is_valid().to_numpy(zero_copy_only=False))
    dropped = pc.if_else(later, "dedup", batch["dropped_by"])
    batch = batch.set_column(batch.schema.get_field_index("dropped_by"), "dropped_by", dropped)
    return batch.drop_columns(["norm"])


class RoundTrip(IndexActor):
    """Ray Data callable class: the query must retrieve its own chunk from the index
    (Promptagator's round-trip consistency); also scores query-chunk similarity."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        dropped = batch["dropped_by"].to_pylist()
        live = [i for i, d in enumerate(dropped) if d is None]
        ranks, scores = [None] * batch.num_rows, [None] * batch.num_rows
        if live:
            queries = [batch["query"][i].as_py() for i in live]
            qv = self.searcher.embed(queries)
            cv = self.searcher.embed([batch["text"][i].as_py() for i in live])
            sims = np.sum(unit(qv) * unit(cv), axis=1)
            c = self.cfg.consistency
            for j, i in enumerate(live):
                scores[i] = float(sims[j])
                if c.enabled:
                    hits = self.searcher.search(queries[j], mode=c.mode, k=c.top_k, vector=qv[j])
                    own = [r for r, h in enumerate(hits) if h["id"] == batch["id"][i].as_py()]
                    ranks[i] = own[0] + 1 if own else None
                    if not own:
                        dropped[i] = "consistency"
                        continue
                if self.cfg.min_score is not None and scores[i] < self.cfg.min_score:
                    dropped[i] = "min_score"
        batch = batch.set_column(batch.schema.get_field_index("dropped_by"), "dropped_by", pa.array(dropped, pa.string()))
        return batch.append_column("own_rank", pa.array(ranks, pa.int32())).append_column("score", pa.array(scores, pa.float32()))


def run(cfg: FiltersConfig, ctx) -> FiltersOutputs:
    generated = ctx.output("synthesize")
    src = generated.generated
    ds = ray.data.read_parquet(src, partitioning=None)  # the folder name is not a column
    ds = ds.map_batches(rule_filters, fn_kwargs={"cfg": cfg}, batch_format="pyarrow")
    if cfg.dedup:
        ds = per_key(ds.map_batches(with_normalised_query, batch_format="pyarrow"), "norm", drop_repeats,
                     rows=generated.counts.get("ok"))
    if cfg.consistency.enabled or cfg.min_score is not None:
        ds = ds.map_batches(RoundTrip, fn_constructor_args=(ctx.output("index"), cfg),
                            batch_size=cfg.batch_size, batch_format="pyarrow",
                            **actor_pool(cfg.concurrency, 1, resources=cfg.resources))
    ds = ds.map_batches(lambda b: b.append_column("status", pa.array(
        ["kept" if d is None else "dropped" for d in b["dropped_by"].to_pylist()], pa.string())), batch_format="pyarrow")
    out = ctx.stage_dir / "queries"
    ds.write_parquet(str(out), partition_cols=["status"])

    counts = count_filters(out, generated.rejects)
    print_filters(ctx.console, counts)
    return FiltersOutputs(kept=str(out / "status=kept"), dropped=str(out / "status=dropped"), counts=counts)


def count_filters(out, synth_rejects=None) -> dict:
    """Per-filter counts, and the share of synthesized chunks (rejected generations
    included) that keep at least one query."""
    reasons: dict[str, int] = {}
    kept = 0
    chunks_in: set[str] = set()
    for _, t in read_columns(synth_rejects, ["id"]) if synth_rejects else []:
        chunks_in.update(t.column("id").to_pylist())
    chunks_kept: set[str] = set()
    for _, t in read_columns(out, ["dropped_by", "id"]):
        for d, cid in zip(t.column("dropped_by").to_pylist(), t.column("id").to_pylist()):
            chunks_in.add(cid)
            if d is None:
                kept += 1
                chunks_kept.add(cid)
            else:
                reasons[d] = reasons.get(d, 0) + 1
    total = kept + sum(reasons.values())
    counts = {"input": total}
    remaining = total
    for name in ORDER:
        dropped = reasons.get(name, 0)
        counts[name] = {"in": remaining, "dropped": dropped, "kept": remaining - dropped}
        remaining -= dropped
    counts["kept"] = kept
    counts["chunks"] = {"in": len(chunks_in), "with_kept_query": len(chunks_kept),
                        "share": round(len(chunks_kept) / max(1, len(chunks_in)), 4)}
    return counts


def print_filters(console, counts: dict) -> None:
    c = counts["chunks"]
    table = progress_table(f"filters: {counts['kept']:,} of {counts['input']:,} queries kept; {c['with_kept_query']:,} "
                           f"of {c['in']:,} chunks ({c['share']:.1%}) keep at least one")
    for col in ("filter", "in", "dropped", "kept"):
        table.add_column(col, justify="right" if col != "filter" else "left")
    for name in ORDER:
        c = counts[name]
        table.add_row(name, f"{c['in']:,}", f"{c['dropped']:,}", f"{c['kept']:,}")
    console.print(table)

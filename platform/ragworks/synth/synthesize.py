"""Stage `synthesize`: chunks -> prompts -> engine -> parsed rows, written as they come (resumable).

task `queries`: InPars / Promptagator few-shot query generation.
task `rag_examples`: RAFT-style examples: a question and answer from an oracle
chunk, shown among distractor chunks from the index (some without the oracle);
with `rag.claims`, also the filters stage's kept claims, each answered by its
chunk's closest sentence (users who ask claims, like SciFact's, get cited answers).
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from ..answers import ABSTAIN
from .config import SynthesizeConfig
from ..incremental import (ATTEMPTS, CARRIED, attempt_folder, carry_last_run, commit, drop_partial_files, not_written,
                           read_columns, string_columns, write_block)
from ..engines import check_engine, generate_into
from ..manifest import files_fingerprint
from ..ordering import first_rows
from . import GeneratedOutputs
from .parse import clean_query, parse_qa
from .prompts import QueryPrompt
from .rag_examples import CLAIM_KEY, claim_answers, claim_keys, with_context

LIGHT_CPUS = 0.25
TASK_DEFAULTS = {"queries": {"max_tokens": 32, "stop": ["\n"]}, "rag_examples": {"max_tokens": 128, "stop": ["\n\n"]}}


def external_inputs(cfg: SynthesizeConfig) -> dict:
    ex = cfg.prompt.examples
    return {"examples": files_fingerprint(ex) if ex else None}


def engine_for(cfg: SynthesizeConfig):
    s = cfg.engine.sampling
    d = TASK_DEFAULTS[cfg.task]
    sampling = s.model_copy(update={"max_tokens": s.max_tokens or d["max_tokens"], "stop": d["stop"] if s.stop is None else s.stop})
    return cfg.engine.model_copy(update={"sampling": sampling})


def expand(batch: pa.Table, per_chunk: int) -> pa.Table:
    """One row per (chunk, sample); `key` names it for resume."""
    idx = np.repeat(np.arange(batch.num_rows), per_chunk)
    out = batch.take(pa.array(idx))
    sample = np.tile(np.arange(per_chunk), batch.num_rows)
    keys = [f"{c}:{k}" for c, k in zip(out["id"].to_pylist(), sample.tolist())]
    return out.append_column("sample", pa.array(sample, pa.int32())).append_column("key", pa.array(keys, pa.string()))


def query_prompts(batch: pa.Table, prompt_cfg) -> pa.Table:
    prompt = QueryPrompt(prompt_cfg)
    texts, titles = batch["text"].to_pylist(), batch["title"].to_pylist()
    return batch.append_column("prompt", pa.array([prompt(x, t) for x, t in zip(texts, titles)], pa.string()))


def parse_rows(batch: pa.Table, task: str, copies: frozenset = frozenset()) -> pa.Table:
    rows = batch.to_pylist()
    for r in rows:
        r.pop("prompt", None)
        # every row names every column: a block's first row decides its columns (pa.Table.from_pylist)
        r["status"], r["reason"], r["query"], r["answer"], r["oracle_id"] = "ok", None, None, None, None
        if r["gen_error"]:
            r["status"], r["reason"] = "reject", f"generation failed: {r['gen_error']}"
        elif task == "queries":
            r["query"] = clean_query(r["generated_text"])
            if not r["query"]:
                r["status"], r["reason"] = "reject", "empty output"
            elif r["query"].lower() in copies:  # small models echo the prompt's examples
                r["status"], r["reason"] = "reject", "copied a prompt example"
        else:
            qa = parse_qa(r["generated_text"])
            if qa is None:
                r["status"], r["reason"] = "reject", "no 'question / Answer:' pair in the output"
            else:
                r["query"] = qa[0]
                r["answer"] = f"{qa[1]} [{r['id']}]" if r["has_oracle"] else ABSTAIN
                r["oracle_id"] = r["id"] if r["has_oracle"] else None
    return string_columns(pa.Table.from_pylist(rows), ("reason", "query", "answer", "oracle_id"))


def run(cfg: SynthesizeConfig, ctx) -> GeneratedOutputs:
    """Both generating stages: `synthesize` (either task) and `rag_examples`."""
    engine = engine_for(cfg)
    check_engine(engine)  # before any work: no GPU, no vLLM, say so now
    out, attempts = ctx.stage_dir / "generated", ctx.stage_dir / ATTEMPTS
    chunks = ray.data.read_parquet(ctx.output("corpus").chunks, num_cpus=LIGHT_CPUS)
    if cfg.limit:  # the first chunks in corpus order: by file, line and place in the document
        chunks = first_rows(chunks.select_columns(["id", "doc_id", "title", "text", "source", "line", "chunk_index"]),
                            cfg.limit, ["source", "line", "chunk_index"]).materialize()
    follow_delta(cfg, ctx, chunks)
    if out.exists():  # a half-done run of an earlier layout wrote its rows there: one more attempt
        out.move_to(attempts / CARRIED)
    dropped = drop_partial_files(attempts)
    before, tokens_before = count_generated(attempts)  # a resumed run's rate counts only its own rows
    if (before["rows"] and ctx.previous is None) or dropped:  # an update said what it carried
        ctx.console.print(f"resuming: {before['rows']:,} rows already written"
                          + (f", {len(dropped)} partial files removed" if dropped else ""))
    mine = attempt_folder(ctx.stage_dir)

    # Light per-row steps take a quarter CPU, so the engine pool can grow into the rest.
    light = {"batch_format": "pyarrow", "num_cpus": LIGHT_CPUS}
    sink = partial(write_block, folder=mine)  # one file per block and status, by the block's keys
    if cfg.task == "rag_examples" and cfg.rag.claims:
        claims = ray.data.read_parquet(ctx.output("filters").kept, partitioning=None, num_cpus=LIGHT_CPUS)
        claims = first_rows(claims.select_columns(["id", "doc_id", "title", "text", "sample", "key", "query"]),
                            cfg.rag.claims, ["key"])
        claims = not_written(claims.map_batches(claim_keys, **light), attempts)
        claims = with_context(claims, cfg, ctx)
        claims.map_batches(claim_answers, fn_kwargs={"max_words": cfg.prompt.max_doc_words}, **light) \
            .map_batches(sink, **light).materialize()
        ctx.console.print(f"claim examples: the first {cfg.rag.claims:,} claims the filters kept")

    chunks = chunks.select_columns(["id", "doc_id", "title", "text"])
    rows = chunks.map_batches(expand, fn_kwargs={"per_chunk": cfg.per_chunk}, **light)
    rows = not_written(rows, attempts)
    if cfg.task == "queries":
        rows = rows.map_batches(query_prompts, fn_kwargs={"prompt_cfg": cfg.prompt}, **light)
    else:
        rows = with_context(rows, cfg, ctx)
    # Blocks of one engine batch, spread over the pool; the actor that generates a block writes it.
    rows = rows.repartition(target_num_rows_per_block=engine.batch_size)
    ctx.console.print(f"generating with {engine.kind} ({engine.model}), actors {tuple(engine.concurrency)}, "
                      f"batch {engine.batch_size}")
    copies = frozenset(e["query"].lower() for e in QueryPrompt(cfg.prompt).examples)
    generate_into(rows, engine, partial(parse_rows, task=cfg.task, copies=copies), sink).materialize()

    duplicates = commit(attempts, out)  # one row per key, whatever a killed run's workers wrote late
    counts, tokens = count_generated(out)
    counts["duplicates_dropped"] = duplicates
    seconds = max(1e-9, time.perf_counter() - ctx.started)
    stats = {"tokens_per_s": round((tokens - tokens_before) / seconds, 2),
             "rows_per_s": round((counts["rows"] - before["rows"]) / seconds, 3), "generated_tokens": tokens}
    ctx.console.print(f"synthesize: {counts['ok']:,} ok, {counts['rejects']:,} rejected; "
                      f"{stats['tokens_per_s']:.1f} tokens/s, {stats['rows_per_s']:.2f} rows/s")
    return GeneratedOutputs(generated=str(out / "status=ok"), rejects=str(out / "status=reject"), counts=counts,
                            throughput=stats, resumed_from_rows=before["rows"])


def follow_delta(cfg: SynthesizeConfig, ctx, chunks) -> None:
    """A corpus update: the last run's rows stay, but for the documents the update replaced (and, with `limit`,
    the chunks no longer among the first N); only the rows missing then are generated. A last run on another
    corpus than the update's base is a rebuild. Claim examples are made again: they need no engine."""
    if ctx.previous is None:
        return
    corpus = ctx.output("corpus")
    if not corpus.updates(ctx.previous):
        ctx.console.print("rebuilding: the last run's rows are from another corpus than this update's base")
        ctx.start_clean()
        return
    replaced = corpus.delta.replaced_ids()
    selected = pa.concat_tables(ray.get(chunks.select_columns(["id"]).to_arrow_refs()))["id"].combine_chunks() \
        if cfg.limit else None
    kept, dropped = carry_last_run(ctx.stage_dir / "generated", ctx.stage_dir / ATTEMPTS, replaced, selected,
                                   regenerate=CLAIM_KEY)
    ctx.console.print(f"updating: {kept:,} rows of the last run kept, {dropped:,} dropped (documents the corpus "
                      "update replaced" + (", chunks no longer selected" if cfg.limit else "") + ")", highlight=False)


def count_generated(out) -> tuple[dict, int]:
    counts = {"ok": 0, "rejects": 0}
    tokens = 0
    for f, t in read_columns(out, ["gen_tokens"]):
        counts["rejects" if "status=reject" in str(f) else "ok"] += t.num_rows
        tokens += int(pc.sum(t["gen_tokens"]).as_py() or 0)
    counts["rows"] = counts["ok"] + counts["rejects"]
    return counts, tokens

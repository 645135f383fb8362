"""Synthetic query generation throughput: the `transformers` engine vs a plain loop.

Same model (bundled SmolLM2-135M-Instruct by default), same few-shot prompts (SciFact
chunks with the SciFact prompt examples), same greedy decoding, so all three give the
same queries. The plain loop generates one prompt at a time in one process with torch
on every core. The pipeline runs the engine in a Ray Data actor pool: batched,
left-padded generation, and (default) the few-shot prefix every prompt shares encoded
once, its KV cache reused by every batch. Prints generated tokens/s of each and the
ratio of the pipeline to the plain loop (target >= 3); the run without the prefix cache
shows what batching alone gives.

    python benchmarks/synth_throughput.py [--n 192] [--batch-size 32] [--document title|text|title_text]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ragworks.synth.config import PromptConfig
from ragworks.engines import TransformersEngineConfig
from ragworks.models import load_causal_lm
from ragworks.synth.prompts import QueryPrompt
from ragworks.synth.synthesize import TASK_DEFAULTS


def prompts_from(dataset: str, n: int, examples: str, document: str) -> list[str]:
    prompt = QueryPrompt(PromptConfig(examples=examples, max_doc_words=100, document=document))
    out = []
    with open(Path(dataset) / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            out.append(prompt(d["text"], d["title"]))
            if len(out) == n:
                return out
    return out


def plain_loop(prompts: list[str], cfg: TransformersEngineConfig) -> tuple[int, float, list[str]]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model, tok = load_causal_lm(cfg.model)
    s = cfg.sampling
    t0, tokens, texts = time.perf_counter(), 0, []
    for p in prompts:
        enc = tok([p], return_tensors="pt", return_token_type_ids=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=s.max_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                 stop_strings=s.stop, tokenizer=tok)
        new = out[0, enc["input_ids"].shape[1]:]
        tokens += int((new != tok.pad_token_id).sum())
        texts.append(tok.decode(new, skip_special_tokens=True))
    return tokens, time.perf_counter() - t0, texts


def pipeline(prompts: list[str], cfg: TransformersEngineConfig) -> tuple[int, float, list[str]]:
    import ray

    from ragworks.engines import generate

    # Blocks of one batch made up front: no repartition task that would wait for a CPU the engine actors hold.
    ds = ray.data.from_items([{"prompt": p} for p in prompts], override_num_blocks=max(1, len(prompts) // cfg.batch_size))
    t0 = time.perf_counter()
    rows = generate(ds, cfg).select_columns(["gen_tokens", "generated_text"]).take_all()
    return sum(r["gen_tokens"] for r in rows), time.perf_counter() - t0, [r["generated_text"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="../shared/data/scifact")
    ap.add_argument("--examples", default="jobs/prompts/scifact_queries.yaml")
    ap.add_argument("--n", type=int, default=192, help="prompts")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--concurrency", type=int, nargs=2, metavar=("MIN", "MAX"), default=None,
                    help="engine actor pool (default: one actor per CPU from the start, so both sides use every core; "
                         "on 2 CPUs Ray Data's resource reservation keeps a (1, 2) pool at one actor)")
    ap.add_argument("--document", default="title", choices=["text", "title", "title_text"],
                    help="prompt.document, as in jobs/scifact_queries.yaml (text: long, prefill-bound prompts)")
    args = ap.parse_args()

    import ray

    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # compare outputs row by row
    d = TASK_DEFAULTS["queries"]
    cfg = TransformersEngineConfig(model=args.model, batch_size=args.batch_size,
                                   concurrency=tuple(args.concurrency or (cpus, cpus)),
                                   sampling={"max_tokens": d["max_tokens"], "stop": d["stop"]})
    prompts = prompts_from(args.dataset, args.n, args.examples, args.document)
    load_causal_lm(cfg.model)  # convert the GGUF once, outside both timings

    t_plain, s_plain, want = plain_loop(prompts, cfg)
    t_batch, s_batch, got_batch = pipeline(prompts, cfg.model_copy(update={"prefix_cache": False}))
    t_pipe, s_pipe, got = pipeline(prompts, cfg)
    plain, batch, pipe = t_plain / s_plain, t_batch / s_batch, t_pipe / s_pipe
    print(f"\nprompts: {len(prompts)} (prompt.document={args.document}, mean {sum(map(len, prompts)) // len(prompts)} chars)"
          f"  model: {cfg.model}  batch size: {cfg.batch_size}  cpus: {cpus}  engine actors: {cfg.concurrency}")
    print(f"plain loop (one prompt at a time)      : {t_plain:6d} tokens in {s_plain:7.1f} s = {plain:7.1f} tokens/s")
    print(f"pipeline, batched, no prefix cache     : {t_batch:6d} tokens in {s_batch:7.1f} s = {batch:7.1f} tokens/s"
          f"  (ratio {batch / plain:.2f})")
    print(f"pipeline (batched + shared prefix KV)  : {t_pipe:6d} tokens in {s_pipe:7.1f} s = {pipe:7.1f} tokens/s")
    same = sum(a.strip() == b.strip() for a, b in zip(want, got))
    print(f"outputs equal to the plain loop's: {same}/{len(prompts)} (batched, no cache: "
          f"{sum(a.strip() == b.strip() for a, b in zip(want, got_batch))}/{len(prompts)})")
    print(f"ratio pipeline/plain: {pipe / plain:.2f}  (target >= 3)")


if __name__ == "__main__":
    main()

"""Answer quality: the base and the tuned generator answer the same held-out RAG examples.

Prompts are the chat layout the generator trained on (`ragworks.answers`),
answered through `ragworks.engines`, the interface synthesize and the server use
(the transformers engine's actor pool, the adapter merged at load); the scores
are citation accuracy, abstention without the oracle chunk, and answer F1
against the reference.
"""

from __future__ import annotations

import json

import pyarrow as pa
import ray

from ..answers import messages, score_answers
from ..engines import TransformersEngineConfig, generate
from ..ordering import first_rows
from ..synth.rag_examples import CLAIM_KEY
from ..train import GeneratorOutputs  # noqa: F401 - the annotation
from .config import GenerationEvalConfig


def chat_prompts(batch: pa.Table, model: str, max_words: int) -> pa.Table:
    """The model's chat template around each example. A task, not an actor pool: at most `max_examples` rows,
    and a pooled task worker loads a tokenizer in a second where a new actor process takes ten."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    prompts = [tok.apply_chat_template(messages(q, json.loads(c), max_words=max_words),
                                       add_generation_prompt=True, tokenize=False)
               for q, c in zip(batch["query"].to_pylist(), batch["context"].to_pylist())]
    return batch.append_column("prompt", pa.array(prompts, pa.string()))


def with_generator(batch: pa.Table, label: str) -> pa.Table:
    return batch.append_column("generator", pa.array([label] * batch.num_rows, pa.string()))


def answered_row(r: dict) -> dict:
    return {"answer": r["generated_text"], "reference": r["answer"], "oracle_id": r["oracle_id"],
            "context_ids": [c["id"] for c in json.loads(r["context"])], "query": r["query"],
            "gen_error": r["gen_error"], "key": r["key"]}


def by_kind(rows: list[dict]) -> dict[str, list[dict]]:
    """Claim examples and generated questions, when both are held out: a mix hides which one the model learned."""
    kinds = {"claims": [r for r in rows if r["key"].startswith(CLAIM_KEY)],
             "questions": [r for r in rows if not r["key"].startswith(CLAIM_KEY)]}
    return kinds if all(kinds.values()) else {}


def answer_metrics(cfg: GenerationEvalConfig, trained: "GeneratorOutputs", console) -> tuple[dict, dict]:
    """({'base': metrics, 'tuned': metrics}, {label: a few answers to show})."""
    base, adapter, max_words = trained.base_model, trained.adapter, trained.max_context_words
    examples = first_rows(ray.data.read_parquet(trained.heldout, num_cpus=0.25), cfg.max_examples, ["key"])
    prompts = examples.map_batches(chat_prompts, fn_kwargs={"model": base, "max_words": max_words},
                                   batch_format="pyarrow", num_cpus=0.25).materialize()
    console.print(f"answering {prompts.count()} held-out examples with the base and the tuned generator")
    # Both generators at once, a pool each: their start-up (most of the time at this size) overlaps. Their
    # inputs are materialized first: no task upstream of the pools waits for a CPU slot the actors hold.
    labelled = {label: generate(prompts.map_batches(with_generator, fn_kwargs={"label": label}, batch_format="pyarrow",
                                                    num_cpus=0.25).materialize(), answer_engine(cfg, base, lora))
                for label, lora in (("base", None), ("tuned", adapter))}
    every = labelled["base"].union(labelled["tuned"]).take_all()  # 2 x max_examples short rows
    metrics, samples, kinds = {}, {}, {}
    for label in labelled:
        rows = sorted((answered_row(r) for r in every if r["generator"] == label), key=lambda r: r["key"])
        metrics[label], parts = scores(rows), by_kind(rows)
        kinds.update({f"{label}, {kind}": scores(part) for kind, part in parts.items()})
        shown = [r for part in parts.values() for r in part[:3]] or rows[:5]
        samples[label] = [{k: r[k] for k in ("query", "answer", "reference", "oracle_id")} for r in shown]
    return {**metrics, **dict(sorted(kinds.items(), key=lambda kv: kv[0].split(", ")[::-1]))}, samples


def answer_engine(cfg: GenerationEvalConfig, model: str, adapter: str | None) -> TransformersEngineConfig:
    """The generator under test, as the engine that answers: the adapter must be merged into these weights, so
    this is the transformers engine (an endpoint would answer with whatever weights it serves)."""
    return TransformersEngineConfig(model=model, adapter=adapter, batch_size=cfg.batch_size,
                                    concurrency=cfg.concurrency, num_cpus=cfg.num_cpus,
                                    sampling={"max_tokens": cfg.max_tokens})


def scores(rows: list[dict]) -> dict:
    return {**score_answers(rows), "errors": sum(bool(r["gen_error"]) for r in rows)}

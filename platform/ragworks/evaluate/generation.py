"""Answer quality: the base and the tuned generator answer the same held-out RAG examples.

Prompts are the chat layout the generator trained on (`ragworks.answers`),
answered through `ragworks.engines`, the interface synthesize and the server use
(the transformers engine's actor pool, the adapter merged at load); the scores
are citation accuracy, abstention without the oracle chunk, and answer F1
against the reference.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from ..answers import messages, score_answers
from ..train import GeneratorOutputs  # noqa: F401 - the annotation
from ..config import GenerationEvalConfig
from ..engines import TransformersEngineConfig, generate
from ..ordering import first_rows
from ..synth.rag_examples import CLAIM_KEY


class ChatPrompts:
    """Ray Data callable class: the model's chat template around each example (tokenizer loaded once)."""

    def __init__(self, model: str, max_words: int):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model)
        self.max_words = max_words

    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts = [self.tok.apply_chat_template(messages(q, json.loads(c), max_words=self.max_words),
                                                add_generation_prompt=True, tokenize=False)
                   for q, c in zip(batch["query"].to_pylist(), batch["context"].to_pylist())]
        return batch.append_column("prompt", pa.array(prompts, pa.string()))


def context_ids(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ids = [json.dumps([c["id"] for c in json.loads(x)]) for x in batch["context"]]
    return {"answer": batch["generated_text"], "reference": batch["answer"], "oracle_id": batch["oracle_id"],
            "context_ids": np.array(ids, dtype=object), "query": batch["query"], "gen_error": batch["gen_error"],
            "key": batch["key"]}


def by_kind(rows: list[dict]) -> dict[str, list[dict]]:
    """Claim examples and generated questions, when both are held out: a mix hides which one the model learned."""
    kinds = {"claims": [r for r in rows if r["key"].startswith(CLAIM_KEY)],
             "questions": [r for r in rows if not r["key"].startswith(CLAIM_KEY)]}
    return kinds if all(kinds.values()) else {}


def answer_metrics(cfg: GenerationEvalConfig, trained: "GeneratorOutputs", console) -> tuple[dict, dict]:
    """({'base': metrics, 'tuned': metrics}, {label: a few answers to show})."""
    base, adapter, max_words = trained.base_model, trained.adapter, trained.max_context_words
    examples = first_rows(ray.data.read_parquet(trained.heldout, num_cpus=0.25), cfg.max_examples, ["key"])
    prompts = examples.map_batches(ChatPrompts, fn_constructor_args=(base, max_words), batch_format="pyarrow",
                                   compute=ActorPoolStrategy(size=1), num_cpus=0.25).materialize()
    metrics, samples, kinds = {}, {}, {}
    for label, lora in (("base", None), ("tuned", adapter)):
        engine = answer_engine(cfg, base, lora)
        console.print(f"answering {prompts.count()} held-out examples with the {label} generator")
        answered = generate(prompts, engine).map_batches(context_ids, batch_format="numpy", num_cpus=0.25)
        rows = sorted(answered.take_all(), key=lambda r: r["key"])  # at most max_examples short rows
        for r in rows:
            r["context_ids"] = json.loads(r["context_ids"])
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

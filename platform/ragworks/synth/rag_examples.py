"""Stage `rag_examples`: RAFT-style examples (Zhang et al. 2024, arXiv 2403.10131) for the generator.

A question and answer generated from an oracle chunk, shown among distractor
chunks from the index (a `no_oracle_fraction` share without the oracle, where
the answer is to abstain). With `rag.claims`, also the filters stage's kept
claims, each answered by its chunk's closest sentence (users who ask claims,
like SciFact's, get cited answers). The generation pipeline is synthesize's.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from ..answers import ABSTAIN, token_f1
from ..incremental import string_columns
from ..index.search import IndexActor
from . import GeneratedOutputs
from .config import SynthesizeConfig
from .prompts import rag_prompt

CLAIM_KEY = "claim:"  # the key prefix of claim examples (`rag.claims`), so evaluation can score them apart


class RagContext(IndexActor):
    """Ray Data callable class: distractors for each chunk from the index, and the prompt."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        rag = self.cfg.rag
        vectors = self.searcher.embed([r["text"] for r in rows]) if rag.mode != "fulltext" else [None] * len(rows)
        for r, vec in zip(rows, vectors):
            rng = random.Random(int(hashlib.sha1(r["key"].encode()).hexdigest(), 16))
            hits = self.searcher.search(r["text"][:2000], mode=rag.mode, k=rag.distractors + 20, vector=vec)
            distractors = [h for h in hits if h["doc_id"] != r["doc_id"]][: rag.distractors]
            has_oracle = rng.random() >= rag.no_oracle_fraction
            context = [{"id": h["id"], "text": h["text"]} for h in distractors]
            if has_oracle:
                context.append({"id": r["id"], "text": r["text"]})
            rng.shuffle(context)
            r.update(context=json.dumps(context), has_oracle=has_oracle,
                     prompt=rag_prompt(r["text"], self.cfg.prompt.max_doc_words))
        return pa.Table.from_pylist(rows)


def claim_keys(batch: pa.Table) -> pa.Table:
    """A kept claim's row, keyed apart from the question generated from the same chunk."""
    keys = pa.array([CLAIM_KEY + k for k in batch["key"].to_pylist()], pa.string())
    return batch.set_column(batch.schema.get_field_index("key"), "key", keys)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def evidence(text: str, claim: str, max_words: int) -> str:
    """The sentence closest to the claim (word F1) among those the prompt shows (the last one as far as
    it is shown), so the answer quotes what the generator will see, not what lies beyond its cut."""
    shown, room = [], max_words
    for sentence in _SENTENCE_END.split(text):
        words = sentence.split()[:room]
        if words:
            shown.append(" ".join(words))
            room -= len(words)
        if room <= 0:
            break
    return max(shown, key=lambda s: token_f1(s, claim), default="")


def claim_answers(batch: pa.Table, max_words: int) -> pa.Table:
    """Claim examples in the generated rows' columns: no generation, the answer cites the chunk it came from."""
    rows = batch.to_pylist()
    for r in rows:
        r.pop("prompt", None)
        found = evidence(r["text"], r["query"], max_words)
        r.update(generated_text=None, gen_error="", gen_tokens=0, gen_worker=None, reason=None,
                 answer=f"{found} [{r['id']}]" if r["has_oracle"] else ABSTAIN,
                 oracle_id=r["id"] if r["has_oracle"] else None, status="ok" if found else "reject")
        if not found:
            r["reason"], r["answer"] = "no sentence in the shown passage", None
    return string_columns(pa.Table.from_pylist(rows), ("generated_text", "gen_worker", "reason", "answer", "oracle_id"))


def with_context(rows: ray.data.Dataset, cfg: SynthesizeConfig, ctx) -> ray.data.Dataset:
    return rows.map_batches(RagContext, fn_constructor_args=(ctx.output("index"), cfg),
                            compute=ActorPoolStrategy(size=1), num_cpus=0.5, batch_size=32, batch_format="pyarrow")


def run(cfg: SynthesizeConfig, ctx) -> GeneratedOutputs:
    """The stage: synthesize's generating pipeline with the RAFT task (its section fixes `task`)."""
    from .synthesize import run as generate_examples

    return generate_examples(cfg, ctx)

"""The `echo` engine: no model, each prompt's last words back, at memory speed.

For what a model would only slow down: a dry run of a job's plumbing before paying for
a GPU, and tests and benchmarks of resume, scale and serving at a million rows.
"""

from __future__ import annotations

import numpy as np

from ..runtime import actor_pool
from .base import ChatModel, PoolEngine, output_batch, worker_id
from .config import EchoEngineConfig


def echo(text: str, max_tokens: int | None) -> str:
    """The text's last `max_tokens` words (32 when unset), joined by spaces."""
    return " ".join(str(text).split()[-(max_tokens or 32):])


class EchoGenerate:
    def __init__(self, cfg: EchoEngineConfig):
        self.max_tokens, self.worker = cfg.sampling.max_tokens, worker_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [echo(p, self.max_tokens) for p in batch["prompt"]]
        return output_batch(batch, texts, [len(t.split()) for t in texts], [""] * len(texts), self.worker)


class EchoChat(ChatModel):
    def __init__(self, cfg: EchoEngineConfig):
        self.cfg = cfg

    def _chat(self, messages, max_tokens, temperature, top_p, stop) -> dict:
        text = echo(messages[-1]["content"], max_tokens)
        return {"text": text, "prompt_tokens": sum(len(str(m["content"]).split()) for m in messages),
                "completion_tokens": len(text.split()), "finish_reason": "stop"}

    def _stream(self, messages, max_tokens, temperature, top_p, stop):
        out = self._chat(messages, max_tokens, temperature, top_p, stop)
        for i, word in enumerate(out["text"].split()):
            yield word if i == 0 else f" {word}"
        yield {k: out[k] for k in ("prompt_tokens", "completion_tokens", "finish_reason")}


class EchoEngine(PoolEngine):
    kind, batch_class, chat_class = "echo", EchoGenerate, EchoChat

    def pool(self) -> dict:
        return actor_pool(self.cfg.concurrency, 0.25, resources=self.cfg.resources)

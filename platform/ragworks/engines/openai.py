"""The `openai` engine: any OpenAI-compatible endpoint (vLLM, TGI, llama.cpp, OpenAI itself).

Batch generation posts to `/completions` (the prompt is already in its final
layout); chat posts the messages to `/chat/completions`, so the endpoint applies
its model's own chat template. Requests run in parallel threads; `qps` spaces
their starts, retries included, so a shared or paid endpoint is not flooded.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import httpx
import numpy as np

from ..runtime import actor_pool
from .base import ChatModel, PoolEngine, output_batch, worker_id
from .config import OpenAIEngineConfig


class RequestFailed(RuntimeError):
    """The endpoint refused a request, or kept failing it through every retry."""


class RateLimit:
    """At most `qps` request starts per second across one process's threads: starts are spaced 1/qps apart
    (smoother for the endpoint than bursts of `qps` at the top of each second)."""

    def __init__(self, qps: int | None):
        self.gap = 1.0 / qps if qps else 0.0
        self.lock = threading.Lock()
        self.next = 0.0

    def wait(self) -> None:
        if not self.gap:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.gap
        time.sleep(start - now)


class Endpoint:
    """One HTTP client for the endpoint: key, timeout, rate limit and retries of transient failures."""

    RETRY = {408, 429, 502, 503, 504}

    def __init__(self, cfg: OpenAIEngineConfig, attempts: int = 4, backoff_s: float = 0.5):
        key = os.environ.get(cfg.api_key_env, "")
        self.http = httpx.Client(base_url=cfg.base_url.rstrip("/"), timeout=cfg.timeout_s,
                                 headers={"Authorization": f"Bearer {key}"} if key else {})
        self.limit, self.attempts, self.backoff_s = RateLimit(cfg.qps), attempts, backoff_s

    def post(self, path: str, payload: dict) -> dict:
        """The response's JSON; transient failures (connection, 408/429/5xx gateway) are retried with backoff."""
        error = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.limit.wait()
            try:
                r = self.http.post(path, json=payload)
            except httpx.TransportError as err:
                error = f"{type(err).__name__}: {err}"
                continue
            if r.status_code in self.RETRY:
                error = f"HTTP {r.status_code}"
                continue
            if r.status_code != 200:
                raise RequestFailed(f"HTTP {r.status_code}: {r.text[:200]}")
            try:
                return r.json()
            except ValueError as err:
                raise RequestFailed(f"unexpected response: {type(err).__name__}: {err}") from None
        raise RequestFailed(f"gave up after {self.attempts} attempts: {error}")

    def events(self, path: str, payload: dict) -> Iterator[dict]:
        """The server-sent events of a `stream: true` request, one JSON object each (not retried: a
        stream half delivered cannot be replayed)."""
        self.limit.wait()
        with self.http.stream("POST", path, json={**payload, "stream": True}) as r:
            if r.status_code != 200:
                raise RequestFailed(f"HTTP {r.status_code}: {r.read().decode(errors='replace')[:200]}")
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, `event:` lines
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                yield json.loads(data)


class OpenAIGenerate:
    """Ray Data callable class: completions, requested in parallel threads.

    Ray's own HTTP request processor fails a whole block when one response is not
    JSON or exhausts its retries; here each request succeeds or fails alone.
    """

    def __init__(self, cfg: OpenAIEngineConfig, attempts: int = 4):
        self.cfg, self.endpoint = cfg, Endpoint(cfg, attempts)
        self.pool = ThreadPoolExecutor(max_workers=min(cfg.batch_size, 32))
        self.worker = worker_id()

    def _one(self, prompt: str) -> tuple[str, int, str]:
        s = self.cfg.sampling
        payload = {"model": self.cfg.model, "prompt": prompt, "max_tokens": s.max_tokens, "temperature": s.temperature,
                   "top_p": s.top_p, "stop": s.stop or None, "seed": s.seed}
        try:
            body = self.endpoint.post("/completions", payload)
            text = body["choices"][0]["text"]
            return text, int((body.get("usage") or {}).get("completion_tokens") or len(text.split())), ""
        except RequestFailed as err:
            return "", 0, str(err)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            return "", 0, f"unexpected response: {type(err).__name__}: {err}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = list(self.pool.map(self._one, [str(p) for p in batch["prompt"]]))
        return output_batch(batch, [r[0] for r in results], [r[1] for r in results], [r[2] for r in results],
                            self.worker)


class OpenAIChat(ChatModel):
    """Chat turns sent as they are: the endpoint's model applies its own chat template."""

    def __init__(self, cfg: OpenAIEngineConfig):
        self.model, self.endpoint = cfg.model, Endpoint(cfg)

    def _payload(self, messages, max_tokens, temperature, top_p, stop) -> dict:
        return {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                "top_p": top_p, **({"stop": stop} if stop else {})}

    def _chat(self, messages, max_tokens, temperature, top_p, stop) -> dict:
        body = self.endpoint.post("/chat/completions", self._payload(messages, max_tokens, temperature, top_p, stop))
        try:
            choice = body["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as err:
            raise RequestFailed(f"unexpected response: {type(err).__name__}: {err}") from None
        usage = body.get("usage") or {}
        return {"text": text.strip(), "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                "completion_tokens": int(usage.get("completion_tokens") or len(text.split())),
                "finish_reason": choice.get("finish_reason") or "stop"}

    def _stream(self, messages, max_tokens, temperature, top_p, stop):
        payload = {**self._payload(messages, max_tokens, temperature, top_p, stop),
                   "stream_options": {"include_usage": True}}
        written, finish, usage = 0, "stop", {}
        for event in self.endpoint.events("/chat/completions", payload):
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                finish = choice.get("finish_reason") or finish
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    written += len(piece.split())
                    yield piece
        yield {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
               "completion_tokens": int(usage.get("completion_tokens") or written), "finish_reason": finish}


class OpenAIEngine(PoolEngine):
    kind, batch_class, chat_class = "openai", OpenAIGenerate, OpenAIChat

    def pool(self) -> dict:
        # I/O bound: a fraction of a CPU per actor, so the pool never starves the tasks around it.
        return actor_pool(self.cfg.concurrency, 0.25, resources=self.cfg.resources)

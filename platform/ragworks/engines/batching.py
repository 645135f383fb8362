"""Concurrent chat requests on one replica, generated together, each one stopped as soon as nobody waits for it.

A Serve replica holds one model. Requests that arrive within `wait_s` of each other are generated as one
batch (left-padded, as the batch engines do: batched synthesis ran 5.3x a one-prompt loop on the same
model), so eight clients cost about what two would one at a time. This is static batching, as Hugging
Face's `generate` allows: a request that arrives mid-batch waits for the next one (vLLM batches
continuously by itself, Kwon et al. 2023). Engines that do not batch (an endpoint client) run each request
in a thread of its own.

Every request has a cancel flag, set when its caller goes (Serve cancels the call when the HTTP client
disconnects or its deadline passes, and the `finally` of `Batcher.stream` runs), and when its stop
sequence or its own `max_tokens` is reached: the model checks the flags at every decoding step (a per-row
stopping criterion), so a dropped stream costs at most one more step, and a batch whose rows are all done
ends. `tokens` counts every token generated for a live request: what shows that none are generated for
nobody.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import AsyncIterator

from .base import ChatModel, StopCut

DONE = object()


@dataclass(eq=False)
class Ask:
    """One chat request as an engine sees it: what to generate, where its pieces go, and whether to go on."""

    messages: list[dict]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] | None
    loop: asyncio.AbstractEventLoop
    tally: "Tally"
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    written: int = 0
    finished: bool = False

    def __post_init__(self):
        self.cut = StopCut(self.stop)

    def _send(self, item) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)

    def live(self) -> bool:
        return not (self.cancelled.is_set() or self.finished)

    def token(self, n: int = 1) -> bool:
        """Count `n` tokens generated for this request; False once it has its `max_tokens`."""
        self.written += n
        self.tally.add(n)
        return self.written < self.max_tokens

    def piece(self, text: str) -> bool:
        """Text the model wrote; False when the request wants no more (a stop sequence, or its caller gone)."""
        if not self.live():
            return False
        out, hit = self.cut.feed(text)
        if out:
            self._send(out)
        if hit:
            self.finish(0, "stop")
        return not hit

    def finish(self, prompt_tokens: int, reason: str, completion_tokens: int | None = None) -> None:
        """The counts, then the end; once (a stop sequence may end a request before its model does)."""
        if self.finished:
            return
        self.finished = True
        if not self.cut.hit and self.cut.rest():
            self._send(self.cut.rest())
        self._send({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens or self.written,
                    "finish_reason": "stop" if self.cut.hit else reason})
        self._send(DONE)

    def fail(self, err: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self._send(err)


class Tally:
    """Tokens generated on this replica, counted from every engine thread."""

    def __init__(self):
        self.tokens, self._lock = 0, threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.tokens += n


class Batcher:
    """The chat requests of one replica, batched for a model that batches (`ChatModel.generate_batch`)."""

    def __init__(self, model: ChatModel, max_size: int = 8, wait_s: float = 0.01):
        self.model, self.max_size, self.wait_s = model, max_size, wait_s
        self.tally, self.running, self.batches = Tally(), 0, 0
        self.pending: queue.Queue[Ask] = queue.Queue()
        if model.batches:
            threading.Thread(target=self._loop, name="ragworks-batcher", daemon=True).start()
        else:
            self.pool = ThreadPoolExecutor(max_size, thread_name_prefix="ragworks-chat")

    def stats(self) -> dict:
        return {"generated_tokens": self.tally.tokens, "running": self.running, "queued": self.pending.qsize(),
                "batches": self.batches}

    async def stream(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                     stop: list[str] | None = None) -> AsyncIterator[str | dict]:
        """Text pieces as they are written, then the counts (as `ChatModel.stream`)."""
        ask = Ask(messages, max_tokens, temperature, top_p, stop, asyncio.get_running_loop(), self.tally)
        if self.model.batches:
            self.pending.put(ask)
        else:
            self.pool.submit(self._run, [ask])
        try:
            while True:
                item = await ask.out.get()
                if item is DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # the caller is gone, or done: the model stops on this request at its next step
            ask.cancelled.set()

    async def complete(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                       stop: list[str] | None = None) -> dict:
        """The whole answer (as `ChatModel.chat`)."""
        text, counts = "", {}
        async for piece in self.stream(messages, max_tokens, temperature, top_p, stop):
            if isinstance(piece, dict):
                counts = piece
            else:
                text += piece
        # stripped as `ChatModel.chat` strips before its stop cut: the text before a stop sequence keeps its end
        return {"text": text.lstrip() if stop else text.strip(), **counts}

    def _run(self, asks: list[Ask]) -> None:
        asks = [a for a in asks if not a.cancelled.is_set()]
        if not asks:
            return
        self.running += len(asks)
        try:
            self.model.generate_batch(asks)
        except Exception as err:  # noqa: BLE001 - each caller gets the error as its answer
            for ask in asks:
                ask.fail(err)
        finally:
            self.running -= len(asks)
            for ask in asks:  # an engine that ended a request without a word still ends it
                ask.finish(0, "stop")

    def _loop(self) -> None:
        while True:
            batch = [self.pending.get()]
            until = time.monotonic() + self.wait_s
            while len(batch) < self.max_size:
                try:
                    batch.append(self.pending.get(timeout=max(0.0, until - time.monotonic())))
                except queue.Empty:
                    break
            self.batches += 1
            by_sampling: dict[tuple, list[Ask]] = {}  # one generate() call samples one way
            for ask in batch:
                by_sampling.setdefault((ask.temperature, ask.top_p), []).append(ask)
            for asks in by_sampling.values():
                self._run(asks)

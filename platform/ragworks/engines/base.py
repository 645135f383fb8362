"""The engine interface and the registry of engines by kind.

Modelled on the builder registry of Ray's `ray.llm._internal.batch`, reduced to
a dict: a kind names the module that implements it, imported only when that kind
is used, so choosing the openai engine never imports torch and choosing
transformers never needs httpx.
"""

from __future__ import annotations

import importlib
import os
import socket
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, ClassVar, Iterator

from ..stage import StageError

if TYPE_CHECKING:
    import ray.data

    from .config import BaseEngineConfig

OUTPUT_COLUMNS = ("generated_text", "gen_error", "gen_tokens")

# kind -> "module:Class" (relative to this package); adding an engine is a module and a line here
# (and its config class in config.py).
ENGINES: dict[str, str] = {
    "transformers": ".transformers:TransformersEngine",
    "vllm": ".vllm:VllmEngine",
    "openai": ".openai:OpenAIEngine",
    "echo": ".echo:EchoEngine",
}


class EngineUnavailable(StageError):
    """The engine cannot run here; the message says what to install or change (a stage reports it in one line)."""


class ChatModel(ABC):
    """One loaded model (or one endpoint client) answering chat turns: what a Serve replica holds.

    `stop` is OpenAI's: the answer ends before the first stop sequence, which is not part of it. Engines
    also pass it to the model so generation stops early; the cut here makes every engine agree."""

    def chat(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             stop: list[str] | None = None) -> dict:
        """{"text", "prompt_tokens", "completion_tokens", "finish_reason"}."""
        out = self._chat(messages, max_tokens, temperature, top_p, stop)
        text, hit = cut_at_stop(out["text"], stop)
        return {**out, "text": text, "finish_reason": "stop" if hit else out["finish_reason"]}

    def stream(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               stop: list[str] | None = None) -> Iterator[str | dict]:
        """Text pieces as they are written, then one dict: {"prompt_tokens", "completion_tokens",
        "finish_reason"} (what a stream's `usage` reports)."""
        usage = {}

        def pieces():
            for piece in self._stream(messages, max_tokens, temperature, top_p, stop):
                if isinstance(piece, dict):
                    usage.update(piece)
                else:
                    yield piece

        source = pieces()
        stopped = yield from stop_at(source, stop)
        for _ in source:  # the model was given the stop sequences too, so this ends soon; its counts come last
            pass
        yield {"prompt_tokens": 0, "completion_tokens": 0, "finish_reason": "stop", **usage,
               **({"finish_reason": "stop"} if stopped else {})}

    batches: ClassVar[bool] = False  # whether `generate_batch` runs its requests as one batch (`batching.py`)

    def generate_batch(self, asks: list) -> None:
        """Answer `batching.Ask`s: pieces to `ask.piece`, tokens to `ask.token`, the end to `ask.finish`,
        stopping a request once it is not `ask.live()`. Here one at a time, through `_stream`."""
        for ask in asks:
            source = self._stream(ask.messages, ask.max_tokens, ask.temperature, ask.top_p, ask.stop)
            counts = {}
            try:
                for piece in source:
                    if isinstance(piece, dict):
                        counts = piece
                    elif ask.piece(piece):
                        ask.token(len(piece.split()) or 1)  # the engine keeps to max_tokens itself
                    else:
                        break
            finally:
                source.close()  # an endpoint's stream is closed, so it stops generating too
            ask.finish(counts.get("prompt_tokens", 0), counts.get("finish_reason", "stop"),
                       counts.get("completion_tokens"))

    @abstractmethod
    def _chat(self, messages: list[dict], max_tokens: int, temperature: float, top_p: float,
              stop: list[str] | None) -> dict:
        """As `chat`, the stop sequences only a hint."""

    @abstractmethod
    def _stream(self, messages: list[dict], max_tokens: int, temperature: float, top_p: float,
                stop: list[str] | None) -> Iterator[str | dict]:
        """As `stream`; the closing dict may be left out (counts then read 0)."""


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """(the text before its earliest stop sequence, whether one was found)."""
    found = [i for i in (text.find(s) for s in stop or ()) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


class StopCut:
    """OpenAI's stop sequences over text arriving in pieces: what may be sent of each piece, holding back
    only a tail that could begin a stop sequence."""

    def __init__(self, stop: list[str] | None):
        self.stop, self.hold = stop, max(map(len, stop)) - 1 if stop else 0
        self.text, self.sent, self.hit = "", 0, False

    def feed(self, piece: str) -> tuple[str, bool]:
        """(what to send now, whether a stop sequence ended the text)."""
        self.text += piece
        cut, self.hit = cut_at_stop(self.text, self.stop)
        end = len(cut) if self.hit else len(self.text) - self.hold
        out = self.text[self.sent: end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out, self.hit

    def rest(self) -> str:
        """What was held back, once the text has ended without a stop sequence."""
        return self.text[self.sent:]


def stop_at(pieces: Iterator[str], stop: list[str] | None):
    """The pieces up to the earliest stop sequence; returns whether a stop sequence ended them."""
    cut = StopCut(stop)
    for piece in pieces:
        out, hit = cut.feed(piece)
        if out:
            yield out
        if hit:
            return True
    if cut.rest():
        yield cut.rest()
    return False


class Engine(ABC):
    """One kind of generation backend. Building one is cheap (nothing loads); the heavy parts live in the
    Ray Data actors `generate` starts and in the `ChatModel` `chat_model` returns."""

    kind: ClassVar[str]

    def __init__(self, cfg: "BaseEngineConfig"):
        self.cfg = cfg

    def check(self, field: str = "synthesize.engine.kind", chat: bool = False) -> None:
        """Raise EngineUnavailable now, before any work, when this engine cannot run on this cluster."""

    @abstractmethod
    def generate(self, ds: "ray.data.Dataset") -> "ray.data.Dataset":
        """`prompt` column in; OUTPUT_COLUMNS and `gen_worker` added; a failing row fails alone."""

    @abstractmethod
    def chat_model(self) -> ChatModel:
        """Load the model (or open the client) for online chat; called once per Serve replica."""

    def generate_into(self, ds: "ray.data.Dataset", finish: Callable, sink: Callable) -> "ray.data.Dataset":
        """Generate, `finish` each generated block (a pyarrow table in and out) and hand it to `sink`, which
        writes it and returns a small summary block. Here the sink runs in a light task after the engine;
        a pool engine runs it inside the actor that generated the block (`PoolEngine.generate_into`)."""
        return self.generate(ds).map_batches(FinishAndSink(finish, sink), batch_format="pyarrow", num_cpus=0.25)


class PoolEngine(Engine):
    """An engine whose batch work is a Ray Data actor pool of `batch_class` (a callable class built from the
    config) and whose chat model is `chat_class`: what an engine that runs in Ray's own workers needs."""

    batch_class: ClassVar[type]
    chat_class: ClassVar[type[ChatModel]]

    @abstractmethod
    def pool(self) -> dict:
        """map_batches kwargs: the actor pool and what each actor asks of Ray."""

    def generate(self, ds):
        return ds.map_batches(self.batch_class, fn_constructor_args=(self.cfg,), batch_size=self.cfg.batch_size,
                              **self.pool())

    def chat_model(self) -> ChatModel:
        return self.chat_class(self.cfg)

    def generate_into(self, ds, finish, sink):
        """The block is written by the actor that generated it, as soon as it is generated: a killed run
        loses only the blocks its actors were generating, never generated rows queued for a writer (Ray
        Data's writer tasks can trail the pool by hundreds of rows when CPUs are short)."""
        return ds.map_batches(GenerateAndSink, fn_constructor_args=(self.batch_class, self.cfg, finish, sink),
                              batch_size=self.cfg.batch_size, **self.pool())


class FinishAndSink:
    """`sink(finish(block))`: the end of `Engine.generate_into`, for a block already generated."""

    def __init__(self, finish: Callable, sink: Callable):
        self.finish, self.sink = finish, sink

    def __call__(self, block):
        return self.sink(self.finish(block))


class GenerateAndSink(FinishAndSink):
    """One pool actor that generates a block, finishes it and writes it (the engine is loaded once)."""

    def __init__(self, batch_class: type, cfg: "BaseEngineConfig", finish: Callable, sink: Callable):
        super().__init__(finish, sink)
        self.generate = batch_class(cfg)

    def __call__(self, batch):
        from ray.data.block import BlockAccessor

        # the table Ray Data itself would make of the engine's output (list columns included)
        return super().__call__(BlockAccessor.batch_to_block(self.generate(batch)))


def engine_for(cfg: "BaseEngineConfig") -> Engine:
    module, _, name = ENGINES[cfg.kind].partition(":")
    return getattr(importlib.import_module(module, __package__), name)(cfg)


def worker_id() -> str:
    """Which actor wrote a row: for debugging and for checking a pool's size."""
    return f"{socket.gethostname()}:{os.getpid()}"


def output_batch(batch: dict, texts: list[str], counts: list[int], errors: list[str], worker: str) -> dict:
    """The input batch with the generation columns every engine adds (errors cut to 500 characters)."""
    import numpy as np

    return {**batch, "generated_text": np.array(texts, dtype=object), "gen_tokens": np.array(counts, dtype=np.int64),
            "gen_error": np.array([e[:500] for e in errors], dtype=object),
            "gen_worker": np.array([worker] * len(texts), dtype=object)}

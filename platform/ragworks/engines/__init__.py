"""Text generation, one interface for every stage and the server: transformers, vllm, openai
(and echo, no model, for dry runs).

Batch stages (synthesize, rag_examples, evaluate's answers) call `generate` on a
Ray Dataset; the Serve `Generator` holds a `chat_engine`. Importing this package
is light (pydantic only): an engine's module, and torch or httpx with it, loads
when that engine is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import ENGINES, OUTPUT_COLUMNS, ChatModel, Engine, EngineUnavailable, engine_for
from .config import (BaseEngineConfig, EchoEngineConfig, EngineConfig, OpenAIEngineConfig, SamplingConfig,
                     TransformersEngineConfig, VllmEngineConfig, engine_config)

if TYPE_CHECKING:
    import ray.data

__all__ = ["ENGINES", "OUTPUT_COLUMNS", "BaseEngineConfig", "ChatModel", "EchoEngineConfig", "Engine", "EngineConfig",
           "EngineUnavailable", "OpenAIEngineConfig", "SamplingConfig", "TransformersEngineConfig", "VllmEngineConfig",
           "chat_engine", "check_engine", "engine_config", "engine_for", "generate", "generate_into", "require_vllm"]


def check_engine(cfg: BaseEngineConfig, field: str = "synthesize.engine.kind", chat: bool = False) -> None:
    """Fail before any work (vLLM missing, no GPU); `chat`: also that the engine can serve chat."""
    engine_for(cfg).check(field, chat=chat)


def generate(ds: "ray.data.Dataset", cfg: BaseEngineConfig) -> "ray.data.Dataset":
    """Adds generated_text, gen_error, gen_tokens and gen_worker to every row of `ds` (column `prompt`)."""
    engine = engine_for(cfg)
    engine.check()
    return engine.generate(ds)


def generate_into(ds: "ray.data.Dataset", cfg: BaseEngineConfig, finish, sink) -> "ray.data.Dataset":
    """`generate`, then `sink(finish(block))` for each generated block, as close to the engine as it can run
    (inside the generating actor for pool engines): the dataset of what `sink` returns."""
    engine = engine_for(cfg)
    engine.check()
    return engine.generate_into(ds, finish, sink)


def chat_engine(cfg: BaseEngineConfig) -> ChatModel:
    """The loaded chat model (or endpoint client) of one Serve replica."""
    return engine_for(cfg).chat_model()


def require_vllm(field: str, gpus: float = 1) -> None:
    from .vllm import require_vllm

    require_vllm(field, gpus)

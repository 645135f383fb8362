"""Engine settings: one pydantic class per engine, told apart by `kind`.

Pydantic only (no torch, no Ray), so a job spec and the Serve builder validate
an engine without loading one. A class per engine means a spec names only the
fields its engine reads: `base_url` on a transformers engine is an error, not a
silently ignored key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, TypeAdapter, model_validator

from ..sections import RESOURCES_HELP, Section


class SamplingConfig(Section):
    temperature: float = Field(0.0, ge=0.0, description="0: greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, description="default: 32 for queries, 128 for rag_examples")
    stop: list[str] | None = Field(None, description="default: a newline for queries, a blank line for rag_examples")
    seed: int = 0


class BaseEngineConfig(Section):
    """What every engine reads."""

    model: str = Field("bundled:smollm2-135m-instruct", description="'bundled:NAME', a Hugging Face id or a local path")
    batch_size: int = Field(16, ge=1)
    concurrency: tuple[int, int] = Field((1, 2), description="engine actor pool: (min, max); the pool grows under load")
    resources: dict[str, float] = Field(default_factory=dict, description=RESOURCES_HELP)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)


class TransformersEngineConfig(BaseEngineConfig):
    kind: Literal["transformers"] = Field(
        "transformers", description="transformers: CPU/GPU actor pool; vllm: ray.data.llm on GPUs; "
                                    "openai: any OpenAI-compatible endpoint; "
                                    "echo: no model, the prompt's last words (dry runs)")
    prefix_cache: bool = Field(True, description="transformers: encode the prompt part all rows share (the few-shot "
                                                  "examples) once and reuse its KV cache, as vLLM's prefix caching does")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per engine actor; torch gets as many threads")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per engine actor")
    adapter: str | None = Field(None, description="transformers: a PEFT LoRA adapter folder applied to the model")


class VllmEngineConfig(BaseEngineConfig):
    kind: Literal["vllm"] = "vllm"
    num_gpus: float = Field(1.0, gt=0, description="GPUs per vLLM engine replica")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="vllm: passed to the vLLM engine")


class OpenAIEngineConfig(BaseEngineConfig):
    kind: Literal["openai"] = "openai"
    base_url: str = Field(..., description="openai: e.g. http://127.0.0.1:8000/v1 (vLLM, TGI, llama.cpp, OpenAI)")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the API key")
    qps: int | None = Field(None, ge=1, description="openai: request starts per second per engine actor "
                                                    "(or Serve replica), across its parallel requests")
    timeout_s: float = Field(120.0, gt=0, description="openai: seconds one request may take")

    @model_validator(mode="after")
    def _url_has_scheme(self) -> "OpenAIEngineConfig":
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r}: give the endpoint's URL, e.g. http://127.0.0.1:8000/v1")
        return self


class EchoEngineConfig(BaseEngineConfig):
    """No model: each prompt's last `sampling.max_tokens` words back (dry runs, tests, benchmarks at scale)."""

    kind: Literal["echo"] = "echo"
    model: str = Field("echo", description="echo: a name for the logs; no model is loaded")


CONFIGS: dict[str, type[BaseEngineConfig]] = {
    "transformers": TransformersEngineConfig, "vllm": VllmEngineConfig, "openai": OpenAIEngineConfig,
    "echo": EchoEngineConfig}


def _by_kind(value: Any) -> Any:
    """Validate with the engine's own class first, so an error names `engine.FIELD` (a tagged union would put
    the kind in the path) and a mapping without `kind` stays the transformers engine older specs meant."""
    if isinstance(value, str):
        value = {"kind": value}
    if isinstance(value, dict):
        kind = value.get("kind", "transformers")
        cls = CONFIGS.get(kind)
        if cls is not None:  # an unknown kind falls through to the union's own "expected tags" error
            _no_foreign_fields(kind, cls, value)
            return cls.model_validate(value)
    return value


HINTS = {"adapter": "; serve the adapter on the endpoint (vLLM: --enable-lora) and name it as model"}


def _no_foreign_fields(kind: str, cls: type[BaseEngineConfig], value: dict) -> None:
    """A field of another engine says which engine reads it, rather than "unknown key"."""
    for key in value:
        owners = [k for k, other in CONFIGS.items() if key in other.model_fields and key not in cls.model_fields]
        if owners:
            raise ValueError(f"{key} is a field of the {' and '.join(owners)} engine, not of the {kind} engine"
                             + HINTS.get(key, ""))


EngineConfig = Annotated[
    Union[TransformersEngineConfig, VllmEngineConfig, OpenAIEngineConfig, EchoEngineConfig],
    Field(discriminator="kind"), BeforeValidator(_by_kind)]

_ADAPTER: TypeAdapter = TypeAdapter(EngineConfig)


def engine_config(value: Any) -> BaseEngineConfig:
    """An engine config from a kind ("openai"), a mapping (a spec section, Serve's args) or a config."""
    return _ADAPTER.validate_python(value)

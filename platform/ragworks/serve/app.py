"""The application builder: `serve run serving/rag.yaml` and `ragworks serve` both call `build`."""

from __future__ import annotations

import os

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .api import RagAPI
from ..storage import Folder
from .deployments import Embedder, Generator, Retriever


class ServeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workdir: str = Field(..., description="a job's workdir: its index (the tuned one when the job made it) is served")
    generator: str | None = Field(None, description="'bundled:NAME', a Hugging Face id or a path; default: the "
                                  "workdir's trained generator (base model + LoRA adapter), else the bundled SmolLM2")
    adapter: str | None = Field(None, description="a PEFT LoRA adapter folder for the generator (default: the "
                                "workdir's, when the generator is the one it was trained on)")
    engine: Literal["transformers", "vllm"] = Field("transformers", description="generator engine; vllm needs a GPU")
    max_tokens: int = Field(128, ge=1, le=1024, description="answer length when a request names none")
    context_words: int = Field(120, ge=8, description="each retrieved chunk is cut to this many words in the prompt "
                               "(a trained generator's own setting wins)")
    reload_s: float = Field(2.0, gt=0, description="how often replicas look for a new index version")
    api_key_env: str = Field("RAGWORKS_API_KEY", description="environment variable holding the API key (unset: open)")
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_batch: int = Field(256, ge=1, description="inputs per /v1/embeddings request")
    min_replicas: dict[str, int] = Field(default_factory=dict, description="replicas kept up by deployment name "
                                         "(autoscaling adds more up to each deployment's max_replicas)")
    cpus: dict[str, float] = Field(default_factory=dict, description="CPUs per replica by deployment name, over the "
                                   "defaults (RagAPI 0.1, Embedder 0.5, Retriever 0.25, Generator 1)")


def check_vllm() -> None:
    """Fail before deploying: the synthesize stage's vLLM checks, then say what is missing here."""
    from ..synth.engines import EngineUnavailable, require_vllm

    require_vllm("serve engine")
    raise EngineUnavailable("serve engine 'vllm' (ray.serve.llm) is not wired into the RAG app yet; "
                            "use engine: transformers")


def choose_generator(opts: ServeOptions, workdir: Folder) -> tuple[str, str | None, int]:
    """(model, adapter, context words per chunk): a job that trained a generator serves it, in the layout it
    trained on, unless the options name another model."""
    from ..manifest import read_manifest
    from ..models import DEFAULT_GENERATOR

    trained = read_manifest(workdir / "train_generator")
    if opts.adapter or trained is None or opts.generator not in (None, trained["model"], trained["base_model"]):
        return opts.generator or DEFAULT_GENERATOR, opts.adapter, opts.context_words
    words = (trained.get("config") or {}).get("max_context_words", opts.context_words)
    return trained["base_model"], trained["outputs"]["adapter"], words


def build(args: dict):
    """Embedder, retriever and generator bound under the FastAPI ingress."""
    opts = ServeOptions(**args)
    unknown = (set(opts.cpus) | set(opts.min_replicas)) - {"RagAPI", "Embedder", "Retriever", "Generator"}
    if unknown:
        raise ValueError(f"cpus / min_replicas: unknown deployments {sorted(unknown)}; known: RagAPI, Embedder, Retriever, Generator")
    if opts.engine == "vllm":
        check_vllm()
    workdir = Folder(opts.workdir)
    if not (workdir / "index" / "manifest.json").exists():
        raise FileNotFoundError(f"{workdir}: no finished index stage to serve; run the job first")
    generator, adapter, words = choose_generator(opts, workdir)
    env = {opts.api_key_env: os.environ[opts.api_key_env]} if os.environ.get(opts.api_key_env) else {}

    def sized(deployment, **actor_options):
        cpus = opts.cpus.get(deployment.name)
        options = {**deployment.ray_actor_options, **({"num_cpus": cpus} if cpus is not None else {}), **actor_options}
        scaling = dict(deployment._deployment_config.autoscaling_config.model_dump(include={
            "min_replicas", "max_replicas", "target_ongoing_requests"}))
        if deployment.name in opts.min_replicas:
            scaling["min_replicas"] = opts.min_replicas[deployment.name]
            scaling["max_replicas"] = max(scaling["max_replicas"], scaling["min_replicas"])
        return deployment.options(ray_actor_options=options, autoscaling_config=scaling)

    ingress = sized(RagAPI, **({"runtime_env": {"env_vars": env}} if env else {}))
    return ingress.bind(sized(Embedder).bind(str(workdir), opts.reload_s),
                        sized(Retriever).bind(str(workdir), opts.reload_s),
                        sized(Generator).bind(generator, adapter),
                        {**opts.model_dump(), "workdir": str(workdir), "generator": generator, "adapter": adapter,
                         "context_words": words})

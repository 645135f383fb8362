"""The application builder: `serve run serving/rag.yaml` and `ragworks serve` both call `build`."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from ..engines import BaseEngineConfig, EngineConfig, TransformersEngineConfig, check_engine
from ..index.config import RerankConfig
from ..index.rerank import rerank_model
from ..stage import product
from ..storage import Folder
from .api import RagAPI
from .deployments import Embedder, Generator, Retriever


class BatchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_size: int = Field(8, ge=1, le=64, description="chat requests generated together on one replica")
    wait_s: float = Field(0.01, ge=0, le=1, description="how long the first request of a batch waits for others")


class ServeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workdir: str = Field(..., description="a job's workdir: its ship gate's choice of index is served (else the tuned "
                         "one when the job made it)")
    generator: str | None = Field(None, description="'bundled:NAME', a Hugging Face id or a path; default: the "
                                  "workdir's trained generator (base model + LoRA adapter), else the bundled SmolLM2")
    adapter: str | None = Field(None, description="a PEFT LoRA adapter folder for the generator (default: the "
                                "workdir's, when the generator is the one it was trained on)")
    engine: EngineConfig = Field(default_factory=TransformersEngineConfig, description=(
        "what generates: a kind (transformers, openai, vllm) or an engine section, e.g. {kind: openai, base_url: "
        "http://127.0.0.1:8001/v1, model: NAME} for a vLLM, TGI or llama.cpp server; retrieval, the prompt layout, "
        "citations and auth stay this app's"))
    rerank: RerankConfig | None = Field(None, description="a cross-encoder re-ranking each search's top hits "
                                        "('reranker': the workdir's train_reranker model); requests may turn it off")
    max_tokens: int = Field(128, ge=1, le=1024, description="answer length when a request names none")
    context_words: int = Field(120, ge=8, description="each retrieved chunk is cut to this many words in the prompt "
                               "(a trained generator's own setting wins)")
    reload_s: float = Field(2.0, gt=0, description="how often replicas look for a new index version")
    api_key_env: str = Field("RAGWORKS_API_KEY", description="environment variable holding the API key (unset: open)")
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_batch: int = Field(256, ge=1, description="inputs per /v1/embeddings request")
    max_in_flight: int = Field(64, ge=1, description="requests one API replica answers at once; past it, 429 with "
                               "Retry-After (below the replica's max_ongoing_requests, so Serve never queues them)")
    min_replicas: dict[str, int] = Field(default_factory=dict, description="replicas kept up by deployment name "
                                         "(autoscaling adds more up to each deployment's max_replicas)")
    access_log: bool = Field(True, description="one INFO line per request, from the API deployment (the inner "
                             "deployments log warnings and errors only); off: none")
    batch: "BatchOptions" = Field(default_factory=lambda: BatchOptions(), description="concurrent chat requests "
                                  "on a generator replica generated together")
    cpus: dict[str, float] = Field(default_factory=dict, description="CPUs per replica by deployment name, over the "
                                   "defaults (RagAPI 0.1, Embedder 0.5, Retriever 0.25, Generator 1, or 0.1 when "
                                   "it only calls an endpoint)")


# Serve's controller and proxy: no access line of their own (the ingress writes the one per request), and no
# INFO chatter (autoscaling decisions, replica starts); warnings and errors always.
SYSTEM_LOGGING = {"enable_access_log": False, "log_level": "WARNING"}


def start(host: str, port: int, request_timeout_s: float | None = None) -> None:
    """Serve's HTTP proxy on `host:port`, logging as `SYSTEM_LOGGING` says. Past `request_timeout_s` the proxy
    answers 408 and cancels the request, which stops its generation as a dropped client's does."""
    from ray import serve

    serve.start(http_options={"host": host, "port": port, "request_timeout_s": request_timeout_s},
                logging_config=SYSTEM_LOGGING)


def choose_generator(opts: ServeOptions, workdir: Folder) -> tuple[BaseEngineConfig, int]:
    """(engine, context words per chunk). A job that trained a generator serves it in the layout it trained on:
    with the transformers engine, its base model and LoRA adapter, unless the options name another model; an
    endpoint serves whatever it serves, so only the trained layout's context length carries over."""
    from ..models import DEFAULT_GENERATOR

    engine = opts.engine
    named = opts.generator or (engine.model if "model" in engine.model_fields_set else None)
    trained = (product(workdir, "adapter") or (None, None))[1]
    words = trained.max_context_words if trained else opts.context_words
    if engine.kind != "transformers":
        if opts.adapter:
            raise ValueError(f"adapter is merged by the transformers engine; with engine {engine.kind}, serve it on "
                             "the endpoint (vLLM: --enable-lora) and name it with --generator")
        if named is None:
            raise ValueError(f"engine {engine.kind}: name the model the endpoint serves (--generator MODEL, or "
                             "engine.model)")
        return engine.model_copy(update={"model": named}), words
    if opts.adapter or trained is None or named not in (None, trained.model, trained.base_model):
        return engine.model_copy(update={"model": named or DEFAULT_GENERATOR, "adapter": opts.adapter}), opts.context_words
    return engine.model_copy(update={"model": trained.base_model, "adapter": trained.adapter}), words


def build(args: dict):
    """Embedder, retriever and generator bound under the FastAPI ingress."""
    opts = ServeOptions(**args)
    unknown = (set(opts.cpus) | set(opts.min_replicas)) - {"RagAPI", "Embedder", "Retriever", "Generator"}
    if unknown:
        raise ValueError(f"cpus / min_replicas: unknown deployments {sorted(unknown)}; known: RagAPI, Embedder, Retriever, Generator")
    check_engine(opts.engine, "serve engine", chat=True)
    workdir = Folder(opts.workdir)
    if product(workdir, "index") is None:
        raise FileNotFoundError(f"{workdir}: no finished index stage to serve; run the job first")
    engine, words = choose_generator(opts, workdir)
    rerank = None
    if opts.rerank is not None:
        rerank = {"config": opts.rerank.model_dump(), "model": rerank_model(opts.rerank, trained_reranker(workdir))}

    def sized(deployment, cpus: float | None = None, ongoing: int | None = None, **actor_options):
        # Serve's access line is INFO: the ingress writes one per request (or none), the inner ones never do
        ingress = deployment.name == "RagAPI"
        logging = {"enable_access_log": ingress and opts.access_log,
                   "log_level": "INFO" if ingress and opts.access_log else "WARNING"}
        cpus = opts.cpus.get(deployment.name, cpus)
        options = {**deployment.ray_actor_options, **({"num_cpus": cpus} if cpus is not None else {}), **actor_options}
        scaling = dict(deployment._deployment_config.autoscaling_config.model_dump(include={
            "min_replicas", "max_replicas", "target_ongoing_requests"}))
        if deployment.name in opts.min_replicas:
            scaling["min_replicas"] = opts.min_replicas[deployment.name]
            scaling["max_replicas"] = max(scaling["max_replicas"], scaling["min_replicas"])
        return deployment.options(ray_actor_options=options, autoscaling_config=scaling, logging_config=logging,
                                  **({"max_ongoing_requests": ongoing} if ongoing else {}))

    # An endpoint client mostly waits on the network: a tenth of a CPU, and many requests in flight, per replica.
    remote = engine.kind == "openai"
    # a local model holds a batch generating and the next one gathering; an endpoint client, many requests
    generator = sized(Generator, cpus=0.1 if remote else None, ongoing=32 if remote else 2 * opts.batch.max_size,
                      **env_of(getattr(engine, "api_key_env", None)))
    return sized(RagAPI, **env_of(opts.api_key_env)).bind(
        sized(Embedder).bind(str(workdir), opts.reload_s), sized(Retriever).bind(str(workdir), opts.reload_s, rerank),
        generator.bind(engine.model_dump(), opts.batch.model_dump()),
        {**opts.model_dump(), "workdir": str(workdir), "generator": engine.model, "rerank": rerank and rerank["model"],
         "adapter": getattr(engine, "adapter", None), "context_words": words, "engine": engine.kind})


def trained_reranker(workdir: Folder) -> str | None:
    found = product(workdir, "reranker")
    return found[1].model if found else None


def env_of(name: str | None) -> dict:
    """ray_actor_options handing a key from the builder's environment to the replica (Serve replicas do not
    inherit it on a cluster)."""
    return {"runtime_env": {"env_vars": {name: os.environ[name]}}} if name and os.environ.get(name) else {}

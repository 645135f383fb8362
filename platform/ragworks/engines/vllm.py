"""The `vllm` engine: Ray's `ray.data.llm` vLLM processor on GPU clusters.

Checked before any work: Ray's processor (and a Serve replica asking for a GPU)
would otherwise wait forever for a GPU node that never comes.
"""

from __future__ import annotations

import importlib.util

import ray

from .base import ChatModel, Engine, EngineUnavailable


def require_vllm(field: str, gpus: float = 1) -> None:
    """Fail at once when vLLM is not installed or the cluster has fewer GPUs than one engine needs."""
    if importlib.util.find_spec("vllm") is None:
        raise EngineUnavailable(f"{field} 'vllm' needs vLLM, which is not installed: pip install 'ragworks[vllm]' "
                                "(GPU machines only); on CPU use transformers")
    have = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    if have < max(gpus, 1):
        raise EngineUnavailable(f"{field} 'vllm' needs a GPU, and this Ray cluster has {have:g} "
                                "(add a GPU worker group, or use transformers on CPU)")


class VllmEngine(Engine):
    kind = "vllm"

    def check(self, field: str = "synthesize.engine.kind", chat: bool = False) -> None:
        require_vllm(field, self.cfg.num_gpus)
        if chat:
            # Online chat would be a `ray.serve.llm` deployment; with no GPU to test it on it is not wired in.
            # A vLLM server reached through the openai engine serves the same model today.
            raise EngineUnavailable(f"{field} 'vllm' (ray.serve.llm) is not wired into the RAG app yet; start "
                                    "`vllm serve MODEL` and use --engine openai --base-url http://HOST:8000/v1")

    def generate(self, ds):  # pragma: no cover - GPU only
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        from ..models import resolve_model

        cfg, s = self.cfg, self.cfg.sampling
        # Custom resources ride on each engine's GPU bundle, so the autoscaler adds the nodes that have both.
        placement = {"placement_group_config": {"bundle_per_worker": {"GPU": max(cfg.num_gpus, 1), **cfg.resources}}}
        processor = build_processor(
            vLLMEngineProcessorConfig(model_source=resolve_model(cfg.model), engine_kwargs=cfg.engine_kwargs,
                                      batch_size=cfg.batch_size, concurrency=cfg.concurrency[1],
                                      should_continue_on_error=True, **(placement if cfg.resources else {})),
            preprocess=lambda row: {"prompt": row["prompt"], "sampling_params": {
                "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens, "stop": s.stop or None,
                "seed": s.seed}},
            postprocess=lambda row: {**{k: v for k, v in row.items() if not k.startswith("__")},
                                     "generated_text": row.get("generated_text") or "",
                                     "gen_error": row.get("__inference_error__") or "",
                                     "gen_tokens": row.get("num_generated_tokens") or 0},
        )
        return processor(ds)

    def chat_model(self) -> ChatModel:
        self.check("serve engine", chat=True)
        raise AssertionError("unreachable: check(chat=True) always raises")

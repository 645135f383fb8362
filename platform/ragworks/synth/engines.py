"""One generation interface, three engines: prompt column in, generated_text out.

Every engine isolates failures per row: a prompt that errors yields a row with
`gen_error` set instead of failing its batch.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import zlib

import numpy as np
import ray

from ..config import EngineConfig
from ..runtime import actor_pool, limit_torch_threads, torch_device

OUTPUT_COLUMNS = ("generated_text", "gen_error", "gen_tokens")


class EngineUnavailable(RuntimeError):
    """The engine cannot run here; the message says what to install or change."""


# ------------------------------------------------------------ transformers
def _cache_keyword() -> str:
    """transformers 5.x renamed generate()'s `past_key_values` to `cache`."""
    import inspect

    from transformers import GenerationMixin

    params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


class HFGenerate:
    """Ray Data callable class: a causal LM loaded once per actor, batched with left padding.

    Few-shot prompts are mostly the same examples; with `prefix_cache` the shared
    token prefix is encoded once per actor and its KV cache is copied into every
    batch, so prefill only pays for each row's own document (outputs are the same).
    """

    MIN_PREFIX = 16  # tokens; shorter shared prefixes are not worth a cache

    def __init__(self, cfg: EngineConfig):
        from ..models import load_causal_lm

        limit_torch_threads()
        self.cfg = cfg
        self.model, self.tok = load_causal_lm(cfg.model, torch_device(cfg.num_gpus), adapter=cfg.adapter)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"  # which actor wrote a row: debugging, pool size
        self.prefix: tuple[list[int], object] | None = None  # (token ids, KV cache of batch size 1)
        self.cache_kw = _cache_keyword()

    def _kwargs(self, prompts: list[str]) -> dict:
        import torch

        s = self.cfg.sampling
        kwargs = dict(max_new_tokens=s.max_tokens, pad_token_id=self.tok.pad_token_id, do_sample=s.temperature > 0)
        if s.temperature > 0:  # reproducible, yet not the same draw for equal prompts in different batches
            torch.manual_seed(s.seed + zlib.crc32("\x00".join(prompts).encode()))
            kwargs.update(temperature=s.temperature, top_p=s.top_p)
        if s.stop:
            kwargs.update(stop_strings=s.stop, tokenizer=self.tok)
        return kwargs

    def _generate(self, prompts: list[str]) -> tuple[list[str], list[int]]:
        import torch

        kwargs = self._kwargs(prompts)
        with torch.inference_mode():
            ids = [self.tok(p, return_token_type_ids=False)["input_ids"] for p in prompts]
            prefix = self._shared_prefix(ids) if self.cfg.prefix_cache else None
            if prefix is not None:
                inputs = self._with_prefix(ids, *prefix)
            else:
                inputs = self.tok.pad({"input_ids": ids}, return_tensors="pt")
            inputs = {k: v.to(self.model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            out = self.model.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1]:]
        texts = self.tok.batch_decode(new, skip_special_tokens=True)
        counts = (new != self.tok.pad_token_id).sum(dim=1).tolist()
        return texts, counts

    def _shared_prefix(self, ids: list[list[int]]) -> tuple[list[int], object] | None:
        """The cached prefix when every row starts with it; else this batch's, encoded now."""
        shortest = min(map(len, ids)) - 1  # every row keeps at least one token of its own
        if self.prefix is not None:
            known = self.prefix[0]
            if len(known) <= shortest and all(row[: len(known)] == known for row in ids):
                return self.prefix
        if len(ids) < 2:
            return None
        import torch

        n = 0
        while n < shortest and all(row[n] == ids[0][n] for row in ids):
            n += 1
        if n < self.MIN_PREFIX:
            return None
        prefix_ids = ids[0][:n]
        out = self.model(torch.tensor([prefix_ids], device=self.model.device), use_cache=True)
        cache = out.cache if self.cache_kw == "cache" else out.past_key_values
        self.prefix = (prefix_ids, cache)
        return self.prefix

    def _with_prefix(self, ids: list[list[int]], prefix_ids: list[int], cache) -> dict:
        """Rows as [shared prefix][left padding][own tokens]; positions skip the padding."""
        import copy

        import torch

        n, pad = len(prefix_ids), self.tok.pad_token_id
        own = [row[n:] for row in ids]
        width = max(map(len, own))
        input_ids = torch.full((len(ids), n + width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        input_ids[:, :n], mask[:, :n] = torch.tensor(prefix_ids), 1
        for i, row in enumerate(own):
            input_ids[i, n + width - len(row):], mask[i, n + width - len(row):] = torch.tensor(row), 1
        batch_cache = copy.deepcopy(cache)  # generate() appends to the cache it is given
        batch_cache.batch_repeat_interleave(len(ids))
        return {"input_ids": input_ids, "attention_mask": mask, self.cache_kw: batch_cache}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [str(p) for p in batch["prompt"]]
        errors = [""] * len(prompts)
        try:
            texts, counts = self._generate(prompts)
        except Exception:  # noqa: BLE001 - isolate the row that broke the batch
            texts, counts = [""] * len(prompts), [0] * len(prompts)
            for i, p in enumerate(prompts):
                try:
                    (texts[i],), (counts[i],) = self._generate([p])
                except Exception as err:  # noqa: BLE001
                    errors[i] = f"{type(err).__name__}: {err}"[:500]
        return {**batch, "generated_text": np.array(texts, dtype=object),
                "gen_error": np.array(errors, dtype=object), "gen_tokens": np.array(counts, dtype=np.int64),
                "gen_worker": np.array([self.worker] * len(prompts), dtype=object)}


def _transformers(ds: ray.data.Dataset, cfg: EngineConfig) -> ray.data.Dataset:
    return ds.map_batches(HFGenerate, fn_constructor_args=(cfg,), batch_size=cfg.batch_size,
                          **actor_pool(cfg.concurrency, cfg.num_cpus, cfg.num_gpus, cfg.resources))


# -------------------------------------------------------------------- vllm
def require_vllm(field: str, gpus: float = 1) -> None:
    """Fail at once: a vLLM engine (Ray Data's processor, a Serve replica) otherwise waits forever for a GPU."""
    if importlib.util.find_spec("vllm") is None:
        raise EngineUnavailable(f"{field} 'vllm' needs vLLM, which is not installed: pip install 'ragworks[vllm]' "
                                "(GPU machines only); on CPU use transformers")
    have = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    if have < max(gpus, 1):
        raise EngineUnavailable(f"{field} 'vllm' needs a GPU, and this Ray cluster has {have:g} "
                                "(add a GPU worker group, or use transformers on CPU)")


def check_vllm(cfg: EngineConfig) -> None:
    require_vllm("synthesize.engine.kind", cfg.num_gpus)


def _vllm(ds: ray.data.Dataset, cfg: EngineConfig) -> ray.data.Dataset:  # pragma: no cover - GPU only
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from ..models import resolve_model

    check_vllm(cfg)
    s = cfg.sampling
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


# ------------------------------------------------------------------ openai
class OpenAIGenerate:
    """Ray Data callable class: completions from any OpenAI-compatible endpoint.

    Ray's own HTTP request processor fails a whole block when one response is not
    JSON or exhausts its retries; here each request succeeds or fails alone.
    """

    RETRY = {408, 429, 502, 503, 504}

    def __init__(self, cfg: EngineConfig, attempts: int = 4):
        from concurrent.futures import ThreadPoolExecutor

        import httpx

        key = os.environ.get(cfg.api_key_env, "")
        self.client = httpx.Client(base_url=cfg.base_url.rstrip("/"), timeout=120.0,
                                   headers={"Authorization": f"Bearer {key}"} if key else {})
        self.pool = ThreadPoolExecutor(max_workers=min(cfg.batch_size, 32))
        self.cfg, self.attempts = cfg, attempts
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def _one(self, prompt: str) -> tuple[str, int, str]:
        import time

        s = self.cfg.sampling
        payload = {"model": self.cfg.model, "prompt": prompt, "max_tokens": s.max_tokens, "temperature": s.temperature,
                   "top_p": s.top_p, "stop": s.stop or None, "seed": s.seed}
        error = ""
        for attempt in range(self.attempts):
            try:
                r = self.client.post("/completions", json=payload)
                if r.status_code in self.RETRY:
                    error = f"HTTP {r.status_code}"
                    time.sleep(0.5 * 2**attempt)
                    continue
                if r.status_code != 200:
                    return "", 0, f"HTTP {r.status_code}: {r.text[:200]}"
                body = r.json()
                text = body["choices"][0]["text"]
                return text, int((body.get("usage") or {}).get("completion_tokens") or len(text.split())), ""
            except (ValueError, KeyError, IndexError, TypeError) as err:
                return "", 0, f"unexpected response: {type(err).__name__}: {err}"
            except Exception as err:  # noqa: BLE001 - connection errors: retry, then give up on this row
                error = f"{type(err).__name__}: {err}"
                time.sleep(0.5 * 2**attempt)
        return "", 0, f"gave up after {self.attempts} attempts: {error}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = list(self.pool.map(self._one, [str(p) for p in batch["prompt"]]))
        return {**batch, "generated_text": np.array([r[0] for r in results], dtype=object),
                "gen_tokens": np.array([r[1] for r in results], dtype=np.int64),
                "gen_error": np.array([r[2][:500] for r in results], dtype=object),
                "gen_worker": np.array([self.worker] * len(results), dtype=object)}


def _openai(ds: ray.data.Dataset, cfg: EngineConfig) -> ray.data.Dataset:
    # I/O bound: a fraction of a CPU per actor, so the pool never starves the tasks around it.
    return ds.map_batches(OpenAIGenerate, fn_constructor_args=(cfg,), batch_size=cfg.batch_size,
                          **actor_pool(cfg.concurrency, 0.25, resources=cfg.resources))


ENGINES = {"transformers": _transformers, "vllm": _vllm, "openai": _openai}


def check_engine(cfg: EngineConfig) -> None:
    if cfg.kind == "vllm":
        check_vllm(cfg)


def generate(ds: ray.data.Dataset, cfg: EngineConfig) -> ray.data.Dataset:
    """Adds generated_text, gen_error and gen_tokens to every row of `ds` (column `prompt`)."""
    check_engine(cfg)
    return ENGINES[cfg.kind](ds, cfg)

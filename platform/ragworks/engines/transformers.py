"""The `transformers` engine: Hugging Face causal LMs on CPU or GPU, in the process that asks.

Batch generation is a Ray Data actor pool (one model per actor, batched with
left padding); chat is one model per Serve replica. Both load through
`models.load_causal_lm`, so a LoRA adapter is merged in the same way.
"""

from __future__ import annotations

import copy
import inspect
import zlib
from threading import Thread

import numpy as np

from ..runtime import actor_pool, limit_torch_threads, torch_device
from .base import ChatModel, PoolEngine, output_batch, worker_id
from .config import TransformersEngineConfig


def _cache_keyword() -> str:
    """transformers 5.x renamed generate()'s `past_key_values` to `cache`."""
    from transformers import GenerationMixin

    params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


def _load(cfg: TransformersEngineConfig):
    """(model, tokenizer) with torch held to the CPUs Ray gave this actor (oversubscribed threads run 5-10x slower)."""
    from ..models import load_causal_lm

    limit_torch_threads()
    return load_causal_lm(cfg.model, torch_device(cfg.num_gpus), adapter=cfg.adapter)


def sampling_kwargs(tok, max_tokens: int, temperature: float, top_p: float, stop: list[str] | None = None) -> dict:
    """generate() keywords: greedy at temperature 0 (top_p would only warn there)."""
    kwargs = dict(max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id, do_sample=temperature > 0)
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p)
    if stop:
        kwargs.update(stop_strings=stop, tokenizer=tok)
    return kwargs


class HFGenerate:
    """Ray Data callable class: a causal LM loaded once per actor, batched with left padding.

    Few-shot prompts are mostly the same examples; with `prefix_cache` the shared
    token prefix is encoded once per actor and its KV cache is copied into every
    batch, so prefill only pays for each row's own document (outputs are the same).
    """

    MIN_PREFIX = 16  # tokens; shorter shared prefixes are not worth a cache

    def __init__(self, cfg: TransformersEngineConfig):
        self.cfg = cfg
        self.model, self.tok = _load(cfg)
        self.worker = worker_id()
        self.prefix: tuple[list[int], object] | None = None  # (token ids, KV cache of batch size 1)
        self.cache_kw = _cache_keyword()

    def _kwargs(self, prompts: list[str]) -> dict:
        import torch

        s = self.cfg.sampling
        if s.temperature > 0:  # reproducible, yet not the same draw for equal prompts in different batches
            torch.manual_seed(s.seed + zlib.crc32("\x00".join(prompts).encode()))
        return sampling_kwargs(self.tok, s.max_tokens, s.temperature, s.top_p, s.stop)

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
                    errors[i] = f"{type(err).__name__}: {err}"
        return output_batch(batch, texts, counts, errors, self.worker)


class HFChat(ChatModel):
    """A causal LM answering chat turns through its own chat template (the layout it was trained in)."""

    def __init__(self, cfg: TransformersEngineConfig):
        self.model, self.tok = _load(cfg)

    def _inputs(self, messages: list[dict]):
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.tok(text, return_tensors="pt", return_token_type_ids=False)
        return {k: v.to(self.model.device) for k, v in inputs.items()}

    def _chat(self, messages, max_tokens, temperature, top_p, stop) -> dict:
        import torch

        inputs = self._inputs(messages)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **sampling_kwargs(self.tok, max_tokens, temperature, top_p, stop))
        new = out[0, inputs["input_ids"].shape[1]:]
        text = self.tok.decode(new, skip_special_tokens=True)
        return {"text": text.strip(), "prompt_tokens": int(inputs["input_ids"].shape[1]),
                "completion_tokens": int(len(new)), "finish_reason": "length" if len(new) >= max_tokens else "stop"}

    batches = True

    def generate_batch(self, asks: list) -> None:
        """One left-padded `generate` for requests that sample alike (`batching.Batcher` groups them); stop
        sequences are cut per row (`Ask.piece`), not by `generate`, which would stop every row alike."""
        import torch
        from transformers import StoppingCriteriaList

        texts = [self.tok.apply_chat_template(a.messages, add_generation_prompt=True, tokenize=False) for a in asks]
        self.tok.padding_side = "left"
        inputs = self.tok(texts, return_tensors="pt", padding=True, return_token_type_ids=False)
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        rows = Rows(self.tok, asks, inputs["attention_mask"].sum(dim=1).tolist(), eos | {self.tok.eos_token_id})
        first = asks[0]
        kwargs = sampling_kwargs(self.tok, max(a.max_tokens for a in asks), first.temperature, first.top_p)
        with torch.inference_mode():
            self.model.generate(**inputs, **kwargs, streamer=rows, stopping_criteria=StoppingCriteriaList([rows]))

    def _stream(self, messages, max_tokens, temperature, top_p, stop):
        from transformers import TextIteratorStreamer

        inputs = self._inputs(messages)
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        worker = Thread(target=self.model.generate, kwargs={
            **inputs, **sampling_kwargs(self.tok, max_tokens, temperature, top_p, stop), "streamer": streamer})
        worker.start()
        text = ""
        for piece in streamer:
            if piece:
                text += piece
                yield piece
        worker.join()
        written = len(self.tok(text, add_special_tokens=False)["input_ids"])  # the streamer gives no count
        yield {"prompt_tokens": int(inputs["input_ids"].shape[1]), "completion_tokens": written,
               "finish_reason": "length" if written >= max_tokens else "stop"}


class Rows:
    """The streamer and the stopping criterion of one batched `generate`: each step's token goes to its
    row's request, and a row is done once its request is (end of text, its max_tokens, its stop sequence,
    its caller gone), which `generate` reads at the same step."""

    def __init__(self, tok, asks: list, prompt_tokens: list[int], eos: set[int]):
        self.tok, self.asks, self.prompt_tokens, self.eos = tok, asks, prompt_tokens, eos
        self.ids = [[] for _ in asks]
        self.said = [""] * len(asks)
        self.done = [False] * len(asks)
        self.started = False

    def put(self, value) -> None:
        if not self.started:  # generate() hands the prompt first
            self.started = True
            return
        for i, token in enumerate(value.reshape(-1).tolist()):
            ask = self.asks[i]
            if self.done[i] or not ask.live():
                self.done[i] = True
                continue
            if token in self.eos:
                self.done[i] = True
                ask.finish(self.prompt_tokens[i], "stop")
                continue
            more = ask.token()
            self.ids[i].append(token)
            text = self.tok.decode(self.ids[i], skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # not in the middle of a character's bytes
                new, self.said[i] = text[len(self.said[i]):], text
                if not ask.cut.text:  # the answer's leading space (a whole answer is stripped too)
                    new = new.lstrip()
                if new and not ask.piece(new):
                    self.done[i] = True
            if not more and not self.done[i]:
                self.done[i] = True
                ask.finish(self.prompt_tokens[i], "length")

    def end(self) -> None:
        for i, ask in enumerate(self.asks):
            ask.finish(self.prompt_tokens[i], "length" if ask.written >= ask.max_tokens else "stop")

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.done = [d or not a.live() for d, a in zip(self.done, self.asks)]
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


class TransformersEngine(PoolEngine):
    kind, batch_class, chat_class = "transformers", HFGenerate, HFChat

    def pool(self) -> dict:
        cfg = self.cfg
        return actor_pool(cfg.concurrency, cfg.num_cpus, cfg.num_gpus, cfg.resources)

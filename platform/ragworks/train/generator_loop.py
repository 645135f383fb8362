"""The generator training loop every Ray Train worker runs: PEFT LoRA on a causal LM.

An example is the model's own chat template around the shared RAG layout
(`ragworks.answers`): instruction, context chunks with ids, question; the loss
covers only the assistant's answer (and its end-of-turn tokens), so the model
learns to answer and cite, not to recite contexts.
"""

from __future__ import annotations

import json
import math

import ray.train

from ..answers import messages, numbered
from .config import TrainGeneratorConfig
from .steps import checkpointer, make_optimizer, restore, run_steps, start_worker

COLUMNS = ["key", "id", "query", "answer", "context", "oracle_id"]  # a training row
IGNORE = -100  # label of tokens the loss skips


def encode(tok, row: dict, cfg: TrainGeneratorConfig) -> tuple[list[int], list[int]]:
    """(input ids, labels): the prompt's labels are IGNORE; a prompt too long loses its oldest tokens."""
    context = json.loads(row["context"])
    chat = messages(row["query"], context, max_words=cfg.max_context_words)
    prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    answer = numbered(row["answer"], context)
    full = tok.apply_chat_template([*chat, {"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently once the answer follows it")
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tok(full[len(prompt):], add_special_tokens=False)["input_ids"][: cfg.max_seq_length // 2]
    keep = cfg.max_seq_length - len(answer_ids)
    prompt_ids = prompt_ids[-keep:]
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def collate(tok, rows: list[dict], cfg: TrainGeneratorConfig, device) -> dict:
    """Right-padded tensors; padding is masked out of attention and loss."""
    import torch

    encoded = [encode(tok, r, cfg) for r in rows]
    width = max(len(ids) for ids, _ in encoded)
    pad = tok.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(encoded):
        input_ids[i, : len(ids)], labels[i, : len(ids)], mask[i, : len(ids)] = torch.tensor(ids), torch.tensor(labs), 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def load_model(base: str, cfg: TrainGeneratorConfig, device, adapter: str | None = None):
    """The base causal LM with a trainable LoRA adapter: new, or the one a checkpoint saved."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    else:
        model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                                 target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM"))
    return model.to(device), tok


def heldout_loss(model, tok, val: list[dict], cfg: TrainGeneratorConfig, device, batch: int = 4) -> dict:
    """Mean loss per answer token over the held-out examples (lower is better)."""
    import torch

    total, tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(val), batch):
            inputs = collate(tok, val[i: i + batch], cfg, device)
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1]
            target = inputs["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1),
                                                     ignore_index=IGNORE, reduction="sum")
            total += float(loss)
            tokens += int((target != IGNORE).sum())
    model.train()
    mean = total / max(tokens, 1)
    return {"val_loss": round(mean, 5), "val_perplexity": round(math.exp(min(mean, 50)), 3)}


def train_loop(config: dict) -> None:
    cfg = TrainGeneratorConfig(**config["cfg"])
    rank, _, device = start_worker(cfg)
    (model, tok), state, saved = restore(
        lambda: load_model(config["model_path"], cfg, device),
        lambda d, _: load_model(config["model_path"], cfg, device, adapter=str(d / "adapter")))
    peft_model = model
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False})
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(params, cfg, config, saved, state, rank)
    total = config["total_steps"]

    val = None
    if rank == 0:
        val = [r for b in ray.train.get_dataset_shard("val").iter_batches(batch_size=256, batch_format="pyarrow")
               for r in b.select(COLUMNS).to_pylist()]

    checkpoint = checkpointer(
        state, rank, score=lambda: heldout_loss(peft_model, tok, val, cfg, device),
        write=lambda folder: peft_model.save_pretrained(str(folder / "adapter")),
        extra=lambda: {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
    if saved is None:
        checkpoint()  # the base model (an adapter that changes nothing) is a candidate too

    def loss_of(batch):
        return model(**collate(tok, batch.select(COLUMNS).to_pylist(), cfg, device)).loss

    model.train()
    run_steps(cfg, config, state, total, loss_of, (params, optimizer, scheduler), checkpoint, unit="examples")

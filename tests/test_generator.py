"""Generator fine-tuning: the shared answer format, label masking, the LoRA stage, the adapter a restarted
worker resumes from, answer metrics."""

import json
from pathlib import Path

import pytest
from conftest import write_jsonl
from fake_llm import FakeLLM
from rich.console import Console

from ragworks.answers import ABSTAIN, abstains, cited_ids, messages, numbered, score_answers, token_f1
from ragworks.config import parse_spec
from ragworks.train.config import TrainGeneratorConfig
from ragworks.runner import run_job

QUIET = Console(quiet=True)

# (doc id, a word only its passage has, passage)
FACTS = [
    ("photo", "chloroplasts", "Plants convert sunlight water and carbon dioxide into glucose and oxygen inside their chloroplasts"),
    ("volcano", "Magma", "Magma rises through the crust and erupts as lava ash and gases from active volcanoes"),
    ("vaccine", "antigen", "A vaccine trains the immune system to recognise a pathogen by showing it an antigen"),
    ("hole", "spacetime", "A black hole is a region of spacetime where gravity stops even light from escaping"),
    ("bread", "Yeast", "Yeast ferments sugars in dough and the carbon dioxide makes bread rise in the oven"),
    ("tide", "tides", "Ocean tides come from the gravitational pull of the moon and the sun on the seas"),
    ("dna", "helix", "DNA stores genetic information as a sequence of four bases along a double helix"),
    ("quake", "Earthquakes", "Earthquakes happen when tectonic plates slip suddenly along a fault in the crust"),
]


def test_answer_scoring_by_hand():
    assert cited_ids("Lava [d2#0] and ash [d9#0], see [d2#0, d1#0].", ["d1#0", "d2#0"]) == ["d2#0", "d1#0"]
    assert cited_ids("Lava [2], ash [1, 7] and [3].", ["d1#0", "d2#0", "d3#0"]) == ["d2#0", "d1#0", "d3#0"]
    context = [{"id": "d1#0", "text": "x"}, {"id": "d2#0", "text": "y"}]
    assert numbered("Magma rises [d2#0].", context) == "Magma rises [2]." and numbered(ABSTAIN, context) == ABSTAIN
    assert abstains(ABSTAIN) and not abstains("Magma rises [d2#0].")
    # pred words {magma, rises, through, crust} vs ref {magma, rises, from, mantle}: 2 shared -> P = R = 0.5
    assert token_f1("Magma rises through the crust [d2#0].", "Magma rises from the mantle.") == pytest.approx(0.5)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    rows = [
        {"answer": "Magma rises [a].", "reference": "Magma rises. [a]", "oracle_id": "a", "context_ids": ["a", "b"]},
        {"answer": "It is [b].", "reference": "Lava flows. [a]", "oracle_id": "a", "context_ids": ["a", "b"]},
        {"answer": ABSTAIN, "reference": ABSTAIN, "oracle_id": None, "context_ids": ["b", "c"]},
        {"answer": "Maybe [b].", "reference": ABSTAIN, "oracle_id": None, "context_ids": ["b", "c"]},
    ]
    s = score_answers(rows)
    assert (s["citation_accuracy"], s["cites_context"], s["abstention"], s["false_abstention"]) == (0.5, 1.0, 0.5, 0.0)
    assert s["answer_f1"] == pytest.approx(0.5) and s["examples"] == 4


def test_labels_cover_only_the_answer_and_long_prompts_lose_their_start():
    from transformers import AutoTokenizer

    from ragworks.models import causal_lm_source
    from ragworks.train.generator_loop import IGNORE, encode

    tok = AutoTokenizer.from_pretrained(causal_lm_source("bundled:smollm2-135m-instruct"))
    context = [{"id": f"d{i}#0", "text": " ".join(f"word{i}x{j}" for j in range(20))} for i in range(3)]
    row = {"query": "what rises?", "answer": "Magma rises [d1#0].", "context": json.dumps(context)}
    ids, labels = encode(tok, row, TrainGeneratorConfig())
    answer = [t for t, lab in zip(ids, labels) if lab != IGNORE]
    assert tok.decode(answer).startswith("Magma rises [2].") and "<|im_end|>" in tok.decode(answer)  # d1#0 is shown 2nd
    first = next(i for i, lab in enumerate(labels) if lab != IGNORE)
    assert all(lab == IGNORE for lab in labels[:first]) and ids[first:] == answer  # the answer comes last, whole
    short_ids, short_labels = encode(tok, row, TrainGeneratorConfig(max_seq_length=64))
    assert len(short_ids) == 64 and [t for t, lab in zip(short_ids, short_labels) if lab != IGNORE] == answer
    prompt_text = tok.apply_chat_template(messages(row["query"], context), add_generation_prompt=True, tokenize=False)
    assert tok.decode(ids[:first]) == prompt_text  # the layout the evaluate stage and Serve prompt with


@pytest.fixture
def facts_dir(tmp_path) -> Path:
    root = tmp_path / "facts"
    write_jsonl(root / "corpus.jsonl", [{"_id": k, "title": k, "text": v} for k, _, v in FACTS])
    write_jsonl(root / "queries.jsonl", [{"_id": f"q-{k}", "text": w} for k, w, _ in FACTS])
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q-{k}\t{k}\t1\n" for k, _, _ in FACTS))
    return root


def rag_spec(facts_dir, url, **train):
    return parse_spec({
        "corpus": {"source": {"path": str(facts_dir)}, "chunking": {"title": False}},
        "index": {"concurrency": [1, 1], "embedder": "static"},  # full-text search only: any embedder will do
        "rag_examples": {"per_chunk": 4, "engine": {"kind": "openai", "base_url": url, "model": "fake", "batch_size": 8},
                         "rag": {"distractors": 2, "no_oracle_fraction": 0.25, "mode": "fulltext"}},
        "train_generator": {"batch_size": 4, "max_seq_length": 192, "max_context_words": 24, "lora": {"r": 4, "alpha": 8},
                            "validation_fraction": 0.3, "validation_max": 8, "cpus_per_worker": 1, **train},
        "evaluate": {"dataset": str(facts_dir), "modes": ["fulltext"],
                     "generation": {"max_examples": 4, "max_tokens": 8, "batch_size": 4}},
    })


def answers_for_facts() -> dict:
    return {word: f" What does the passage say about {word}?\nAnswer: {text.split(' and ')[0]}."
            for _, word, text in FACTS}


def test_lora_job_trains_an_adapter_merges_it_and_reports_answers(ray_local, tmp_path, facts_dir):
    """One worker (resuming after a killed worker is the shared step loop's, which the retriever's S3 test
    kills; the adapter a generator checkpoint resumes from is loaded in the test below)."""
    from peft import PeftConfig

    with FakeLLM(answers_for_facts()) as llm:
        spec = rag_spec(facts_dir, llm.url, workers=1, epochs=1, checkpoint_every=2, merged=True)
        ms = run_job(spec, workdir=tmp_path / "wd", console=QUIET)
    m = ms["train_generator"]
    assert m["outputs"]["counts"]["steps"] == m["outputs"]["counts"]["train_examples"] // 4
    adapter = Path(m["outputs"]["adapter"])
    assert PeftConfig.from_pretrained(str(adapter)).peft_type == "LORA" and (adapter / "adapter_model.safetensors").exists()
    merged = Path(m["outputs"]["merged"])
    assert (merged / "config.json").exists() and not (merged / "adapter_config.json").exists()  # plain weights
    losses = [h["val_loss"] for h in m["outputs"]["history"]]
    assert m["outputs"]["best"]["val_loss"] == min(losses) < losses[0]  # training lowered the held-out loss of the base model

    gen = ms["evaluate"]["outputs"]["generation"]
    assert set(gen) == {"base", "tuned"} and gen["tuned"]["examples"] == 4 and gen["tuned"]["errors"] == 0
    report = Path(ms["evaluate"]["outputs"]["markdown"]).read_text()
    assert "Answers: 4 held-out RAG examples" in report and Path(ms["evaluate"]["outputs"]["answers_chart"]).exists()


def test_a_checkpointed_adapter_loads_back_trainable_with_its_weights(tmp_path):
    """What a restarted generator worker resumes from (`generator_loop.load_model(adapter=...)`): the adapter a
    checkpoint saved, trainable again, with the weights it was saved with."""
    import torch

    from ragworks.models import causal_lm_source
    from ragworks.train.generator_loop import load_model

    cfg, base = TrainGeneratorConfig(lora={"r": 4, "alpha": 8}), causal_lm_source("bundled:smollm2-135m-instruct")
    model, _ = load_model(base, cfg, "cpu")
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in trained.values():
            p.add_(0.01)  # a step's worth of change, in the LoRA A and B matrices alike
    model.save_pretrained(str(tmp_path / "adapter"))
    again, _ = load_model(base, cfg, "cpu", adapter=str(tmp_path / "adapter"))
    restored = {n: p for n, p in again.named_parameters() if p.requires_grad}
    assert set(restored) == set(trained) and trained
    assert all(torch.equal(restored[n], trained[n]) for n in trained)


def test_a_first_conversion_of_the_bundled_gguf_draws_no_bar_into_a_log(tmp_path):
    """A fresh machine's first run converts the GGUF inside a worker whose output goes to a file: tqdm was
    imported long before (as Ray imports it), so only a bar drawn for terminals keeps the log clean."""
    import os
    import subprocess
    import sys

    code = ("import tqdm.auto\n"
            "from ragworks.models import causal_lm_source\n"
            "print(causal_lm_source('bundled:smollm2-135m-instruct'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAGWORKS_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert (Path(done.stdout.strip()) / "config.json").is_file()
    assert Path(done.stdout.strip()).is_relative_to(tmp_path)
    assert "Converting and de-quantizing" not in done.stderr, done.stderr[-2000:]

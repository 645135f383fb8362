"""The FastAPI ingress: OpenAI-compatible chat and embeddings, search, health.

Requests are checked before any model runs: an API key when one is configured
(401), the body's size (413) and its fields (422, FastAPI's own messages).
"""


import asyncio
import base64
import hmac
import json
import os
import time
import uuid

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve

from ..answers import cited_ids, messages
from .schemas import ChatRequest, EmbeddingRequest, SearchRequest


OPEN_PATHS = {"/healthz", "/docs", "/openapi.json"}


def rag_messages(chat: list[dict], hits: list[dict], max_words: int) -> list[dict]:
    """The conversation in the layout the generator was trained on, the retrieved chunks before the last turn."""
    *history, last = chat
    return messages(last["content"], hits, history=history, max_words=max_words)


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


async def parse(request: Request, model: type[BaseModel]) -> BaseModel:
    """The body, read only after `guard`: an unauthenticated caller learns nothing from validation errors.

    Errors are FastAPI's own 422 shape, each with the failing field's path.
    """
    try:
        data = json.loads(await request.body())
    except ValueError as err:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": f"JSON decode error: {err}"}])
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                      for e in err.errors(include_url=False, include_context=False)])


def body_of(model: type[BaseModel]) -> dict:
    """The request body in the OpenAPI docs, as a typed parameter would show it."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


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
        return {"status": "ok", "auth": self.api_key is not None, "engine": self.options["engine"],
                "generator": self.options["generator"], "adapter": self.options["adapter"]}

    async def _hits(self, query: str, mode: str, k: int) -> list[dict]:
        vector = None if mode == "fulltext" else await self.embedder.embed.remote(query)
        return await self.retriever.search.remote(query, vector, mode, k)

    @api.post("/v1/search", openapi_extra=body_of(SearchRequest))
    async def search(self, request: Request) -> dict:
        guard(request, self.api_key, self.options["max_body_bytes"])
        body = await parse(request, SearchRequest)
        start = time.perf_counter()
        hits = await self._hits(body.query, body.mode, body.top_k)
        return {"object": "list", "mode": body.mode, "data": hits, "took_ms": round(1000 * (time.perf_counter() - start), 2)}

    @api.post("/v1/embeddings", openapi_extra=body_of(EmbeddingRequest))
    async def embeddings(self, request: Request) -> dict:
        guard(request, self.api_key, self.options["max_body_bytes"])
        body = await parse(request, EmbeddingRequest)
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

    @api.post("/v1/chat/completions", openapi_extra=body_of(ChatRequest))
    async def chat(self, request: Request):
        guard(request, self.api_key, self.options["max_body_bytes"])
        body = await parse(request, ChatRequest)
        turns = [m.model_dump() for m in body.messages]
        if turns[-1]["role"] != "user":
            return error(422, "the last message must be the user's question", "invalid_request_error")
        hits = await self._hits(turns[-1]["content"], body.mode, body.top_k)
        prompt = rag_messages(turns, hits, self.options["context_words"])
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
                    "citations": cited_ids(out["text"], [h["id"] for h in hits]), "context": context}

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
            yield chunk({}, "stop", citations=cited_ids(text, [h["id"] for h in hits]), context=context)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

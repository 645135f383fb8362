"""The FastAPI ingress: OpenAI-compatible chat, embeddings and models, search, health, the playground.

Requests are checked before any model runs: an API key when one is configured
(401), the body's size (413), its fields (422, naming the field) and the
replica's load (429 with Retry-After when `max_in_flight` requests are already
being answered: a client backs off instead of waiting in a queue without end).
Every error has OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
which OpenAI's clients turn into their typed exceptions.
"""


import asyncio
import base64
import hmac
import json
import logging
import os
import time
import uuid
import weakref

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import TaskCancelledError
from ray.serve.exceptions import RequestCancelledError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..answers import cited_ids, messages
from .drain import DrainWatch
from .metrics import ApiMetrics, exposition, measured
from .names import ServedModels, model_id
from .schemas import ChatRequest, EmbeddingRequest, SearchRequest
from .tokens import FIX, texts_of


OPEN_PATHS = {"/", "/healthz", "/docs", "/openapi.json"}  # the playground asks for the key in the page
KINDS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 411: "invalid_request_error",
         413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


def rag_messages(chat: list[dict], hits: list[dict], max_words: int) -> list[dict]:
    """The conversation in the layout the generator was trained on, the retrieved chunks before the last turn."""
    *history, last = chat
    return messages(last["content"], hits, history=history, max_words=max_words)


def error(status: int, message: str, kind: str | None = None, param: str | None = None, code: str | None = None,
          headers: dict | None = None) -> JSONResponse:
    """OpenAI's error body: its clients raise `error.message` as the exception's text."""
    kind = kind or KINDS.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def field_path(loc) -> str:
    """A validation error's location as a client names the field: `messages.0.content`."""
    return ".".join(str(p) for p in loc if p != "body")


async def validation_failed(request: Request, err: RequestValidationError) -> JSONResponse:
    first, *rest = err.errors() or [{"loc": (), "msg": "invalid request"}]
    param = field_path(first.get("loc", ())) or None
    more = f" (and {len(rest)} more)" if rest else ""
    return error(422, f"{param + ': ' if param else ''}{first['msg']}{more}", param=param, code=first.get("type"))


async def http_failed(request: Request, err: StarletteHTTPException) -> JSONResponse:
    detail = err.detail if isinstance(err.detail, dict) else {"message": str(err.detail)}
    return error(err.status_code, detail["message"], detail.get("type"), detail.get("param"), detail.get("code"),
                 headers=getattr(err, "headers", None))


async def crashed(request: Request, err: Exception) -> JSONResponse:
    return error(500, f"internal error: {type(err).__name__}: {err}", "server_error")


def guard(request: Request, api_key: "str | None", max_body: int, body: bool = True) -> None:
    """Each route's first call: Serve's class-based ingress drops app-level middleware and dependencies."""
    if api_key and request.url.path not in OPEN_PATHS:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise HTTPException(401, {"message": "missing or wrong API key (Authorization: Bearer KEY)",
                                      "type": "authentication_error"})
    if not body:
        return
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


api = FastAPI(title="ragworks", description="Search, embeddings and retrieval-augmented chat over a ragworks index.",
              exception_handlers={RequestValidationError: validation_failed, StarletteHTTPException: http_failed,
                                  Exception: crashed})


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Busy:
    """Requests this replica is answering; past `limit`, new ones get 429 with Retry-After at once."""

    def __init__(self, limit: int, retry_after_s: int = 1):
        self.limit, self.retry_after_s, self.active = limit, retry_after_s, 0

    def acquire(self) -> None:
        """Take a slot or raise 429; `release` gives it back (a streamed answer holds it until its last chunk)."""
        if self.active >= self.limit:
            raise HTTPException(429, {"message": f"busy: {self.active} requests in flight on this replica; retry "
                                                 f"after {self.retry_after_s} s", "type": "rate_limit_error",
                                      "code": "overloaded"}, headers={"Retry-After": str(self.retry_after_s)})
        self.active += 1

    def release(self) -> None:
        self.active -= 1

    def release_once(self):
        """A release that runs at most once, however many ways the request ends."""
        done = []

        def release() -> None:
            if not done:
                done.append(True)
                self.release()
        return release

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def access_lines_only(record: logging.LogRecord) -> bool:
    """Serve logs its access line at INFO, beside INFO chatter of its own on every replica (handles resolved,
    replica sets updated): at INFO the ingress keeps the access lines and drops the rest; warnings and errors
    always pass."""
    return record.levelno >= logging.WARNING or bool(getattr(record, "serve_access_log", False))


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=128,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32})
@serve.ingress(api)
class RagAPI:
    def __init__(self, embedder, retriever, generator, options: dict):
        self.embedder, self.retriever, self.generator = embedder, retriever, generator
        self.options = options
        # on the logger, not its handlers: Serve replaces the handlers when the logging config changes
        logging.getLogger("ray.serve").addFilter(access_lines_only)
        self.api_key = os.environ.get(options["api_key_env"]) or None
        self.busy = Busy(options["max_in_flight"])
        self.drain = DrainWatch()
        self.metrics = ApiMetrics(lambda: self.busy.active)
        self.created = int(time.time())

    async def _refuse_when_draining(self) -> None:
        if await self.drain.draining():
            self.drain.refused()
            raise HTTPException(503, {"message": "the server is shutting down; retry on another replica",
                                      "type": "server_error", "code": "shutting_down"},
                                headers={"Connection": "close", "Retry-After": "1"})

    async def _admit(self, request: Request, model: "type[BaseModel] | None" = None) -> "BaseModel | None":
        """Shutdown, auth, size, then the body (when the route has one): each route's first call."""
        await self._refuse_when_draining()
        guard(request, self.api_key, self.options["max_body_bytes"], body=model is not None)
        return None if model is None else await parse(request, model)

    @api.get("/", include_in_schema=False)
    async def playground(self):
        from .playground import page

        return page()

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """`index`: the table version and rows one retriever replica searches (a corpus update moves them).
        Open without a key, so it names models by id (`names.model_id`), never by a path of the server; 503
        while the server drains, so a load balancer stops sending it requests."""
        await self._refuse_when_draining()
        info = await self.retriever.info.remote()
        return {"status": "ok", "auth": self.api_key is not None, "engine": self.options["engine"],
                "generator": model_id(self.options["generator"]), "adapter": bool(self.options["adapter"]),
                "reranker": model_id(self.options["rerank"]) if self.options.get("rerank") else None,
                "index": {"version": info["table_version"], "rows": info["rows"]}}

    async def _models(self, purpose: "str | None" = None, asked: "str | None" = None) -> ServedModels:
        """The served models (the embedder follows the index); 404 `model_not_found` when `asked` is not
        `purpose`'s."""
        served = ServedModels(self.options["generator"], await self.embedder.model_name.remote())
        wrong = purpose and served.check(purpose, asked)
        if wrong:
            raise HTTPException(404, {"message": wrong, "type": "invalid_request_error", "param": "model",
                                      "code": "model_not_found"})
        return served

    @api.get("/metrics", include_in_schema=False)
    async def prometheus(self, request: Request):
        """Prometheus's text format: ragworks's and Serve's metrics of this node (`metrics.py`)."""
        await self._admit(request)
        return PlainTextResponse(await asyncio.to_thread(exposition), media_type="text/plain; version=0.0.4")

    @api.get("/v1/models")
    @measured("/v1/models")
    async def models(self, request: Request) -> dict:
        """The served generator (what chat answers with) and embedder (what embeddings and search use), by the
        ids a request names them with."""
        await self._admit(request)
        served = await self._models()
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": self.created, "owned_by": "ragworks", "purpose": purpose}
            for purpose, name in served.ids.items()]}

    @api.get("/v1/chunks/{chunk_id:path}")
    @measured("/v1/chunks")
    async def chunk(self, chunk_id: str, request: Request) -> dict:
        """One chunk by id: what a citation opens."""
        await self._admit(request)
        found = await self.retriever.chunk.remote(chunk_id)
        if found is None:
            raise HTTPException(404, {"message": f"no chunk with id {chunk_id!r}", "type": "not_found_error",
                                      "param": "chunk_id"})
        return {"object": "chunk", **found}

    def _rerank(self, asked: "bool | None") -> bool:
        """A request's `rerank`: unset follows the server (on when it has a cross-encoder); true without one is
        an error, not a silent plain search."""
        if asked and not self.options.get("rerank"):
            raise HTTPException(422, {"message": "rerank: this server has no reranker (serve with rerank: {model: "
                                                 "...} or --rerank MODEL)", "param": "rerank"})
        return bool(self.options.get("rerank")) if asked is None else asked

    async def _hits(self, query: str, mode: str, k: int, rerank: "bool | None" = None) -> list[dict]:
        rerank = self._rerank(rerank)
        vector = None if mode == "fulltext" else await self.embedder.embed.remote(query)
        return await self.retriever.search.remote(query, vector, mode, k, rerank)

    @api.post("/v1/search", openapi_extra=body_of(SearchRequest))
    @measured("/v1/search")
    async def search(self, request: Request) -> dict:
        body = await self._admit(request, SearchRequest)
        with self.busy:
            start = time.perf_counter()
            hits = await self._hits(body.query, body.mode, body.top_k, body.rerank)
        return {"object": "list", "mode": body.mode, "reranked": self._rerank(body.rerank), "data": hits, "took_ms": round(1000 * (time.perf_counter() - start), 2)}

    @api.post("/v1/embeddings", openapi_extra=body_of(EmbeddingRequest))
    @measured("/v1/embeddings")
    async def embeddings(self, request: Request) -> dict:
        body = await self._admit(request, EmbeddingRequest)
        served = await self._models("embeddings", body.model)
        texts = await asyncio.to_thread(texts_of, body.input)
        if texts is None:
            return error(400, f"input: token ids cannot be decoded on this server (no tokenizer for them); {FIX}",
                         param="input", code="token_ids_unsupported")
        if len(texts) > self.options["max_batch"] or any(len(t) > 20_000 for t in texts):
            return error(413, f"at most {self.options['max_batch']} inputs of 20,000 characters", param="input")
        with self.busy:
            vectors = await asyncio.gather(*(self.embedder.embed.remote(t) for t in texts))

        def encode(v: np.ndarray):
            return base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" else v.tolist()
        words = sum(len(t.split()) for t in texts)
        return {"object": "list", "model": served.ids["embeddings"],
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": words, "total_tokens": words}}

    @api.post("/v1/chat/completions", openapi_extra=body_of(ChatRequest))
    @measured("/v1/chat/completions")
    async def chat(self, request: Request):
        body = await self._admit(request, ChatRequest)
        served = await self._models("chat", body.model)
        turns = [{"role": m.role, "content": m.text()} for m in body.messages]
        if turns[-1]["role"] != "user":
            return error(422, "messages: the last message must be the user's question", param="messages")
        self.busy.acquire()  # released when the answer, or its stream, ends
        streaming = False
        try:
            hits = await self._hits(turns[-1]["content"], body.mode, body.top_k, body.rerank)
            prompt = rag_messages(turns, hits, self.options["context_words"])
            sampling = body.sampling(self.options["max_tokens"])
            head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.ids["chat"]}
            ids = [h["id"] for h in hits]
            if not body.stream:
                calls = [self.generator.complete.remote(prompt, **sampling) for _ in range(body.n)]
                try:
                    outs = await asyncio.gather(*calls)
                except asyncio.CancelledError:  # the client went (or its deadline passed): stop generating
                    for call in calls:
                        call.cancel()
                    raise
                return {**head, "object": "chat.completion",
                        "choices": [{"index": i, "message": {"role": "assistant", "content": out["text"]},
                                     "finish_reason": out["finish_reason"]} for i, out in enumerate(outs)],
                        "usage": usage(outs[0]["prompt_tokens"], sum(o["completion_tokens"] for o in outs)),
                        "citations": cited_ids(outs[0]["text"], ids), "context": ids}
            pieces = self.generator.options(stream=True).stream.remote(prompt, **sampling)
            with_usage = bool(body.stream_options and body.stream_options.include_usage)
            release = self.busy.release_once()
            events = self._events(pieces, head, ids, with_usage, release)
            # a client gone before the first chunk: the generator never runs its `finally`, but it is collected
            weakref.finalize(events, release)
            streaming = True
            return StreamingResponse(events, media_type="text/event-stream")
        finally:
            if not streaming:
                self.busy.release()

    async def _events(self, pieces, head: dict, ids: list[str], with_usage: bool, release):
        """Server-sent chunks as OpenAI streams them: the role, the text pieces, the finish reason (with the
        citations and context ids), then the usage when asked for (`choices` empty), then [DONE]."""
        def chunk(choices: list, **extra) -> str:
            return f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': choices, **extra})}\n\n"

        def delta(d: dict, finish: "str | None" = None) -> list:
            return [{"index": 0, "delta": d, "finish_reason": finish}]

        finished = False
        try:
            yield chunk(delta({"role": "assistant", "content": ""}))
            text, counts = "", {}
            async for piece in pieces:
                if isinstance(piece, dict):
                    counts = piece
                    continue
                text += piece
                yield chunk(delta({"content": piece}))
            yield chunk(delta({}, counts.get("finish_reason", "stop")), citations=cited_ids(text, ids), context=ids)
            if with_usage:
                yield chunk([], usage=usage(counts.get("prompt_tokens", 0), counts.get("completion_tokens", 0)))
            yield "data: [DONE]\n\n"
            finished = True
        except (RequestCancelledError, TaskCancelledError):  # the generator's call was cancelled: nobody to answer
            return
        finally:
            if not finished:  # the client went mid-answer: the generator stops at its next step
                pieces.cancel()
            release()

"""The replica's HTTP surface: OpenAI endpoints, health (vLLM's readiness contract), sleep mode, metrics."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference.engines.base import Engine, EngineNotReady, PromptTooLong
from inference.metrics import ReplicaMetrics
from inference.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    count_tokens,
    parse_body,
)

BODY_READ_TIMEOUT_S = 30.0  # a client that sends its body slower than this gets 408, not a held slot
MAX_WAITING_DEFAULT = 1024  # requests queued beyond the batch slots before 429s
DISCONNECT_POLL_S = 0.1


def _err(e: OpenAIError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if e.status in (429, 503):
        headers.setdefault("Retry-After", "1")
    return JSONResponse(e.body(), status_code=e.status, headers=headers or None)


def _request_body_schemas() -> dict[str, Any]:
    """The POST bodies' JSON schemas, refs pointing into components (for the OpenAPI document)."""
    out: dict[str, Any] = {}
    for m in (ChatCompletionRequest, CompletionRequest):
        schema = m.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[m.__name__] = schema
    return out


def _body(model: type[Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class _ReplicaApp(FastAPI):
    """The OpenAPI document also names the request bodies, which the routes read as raw bytes."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(title=self.title, version="1", routes=self.routes)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(_request_body_schemas())
            self.openapi_schema = doc
        return self.openapi_schema


def create_app(engine: Engine, served_model: str, max_waiting: int = MAX_WAITING_DEFAULT,
               body_timeout_s: float = BODY_READ_TIMEOUT_S) -> FastAPI:
    metrics = ReplicaMetrics(served_model)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # `python -m inference` loads before it binds (vLLM's order); an app served by other means (tests)
        # loads here, answering 503 until then
        loader = None if engine.ready else asyncio.create_task(engine.load(), name="model-load")
        yield
        if loader is not None:
            loader.cancel()

    app = _ReplicaApp(title="gpufleet replica", lifespan=lifespan)

    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, e: OpenAIError) -> JSONResponse:
        return _err(e)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        # whatever slipped through is still an OpenAI-shaped answer, not plain text
        return _err(OpenAIError(500, f"internal error: {type(e).__name__}", type_="server_error"))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        return _err(OpenAIError(400, str(e.errors()[0].get("msg", "invalid request"))))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return _err(OpenAIError(e.status_code, str(e.detail), code=None), headers=e.headers)  # Allow on 405

    # vLLM's readiness contract, the only one the autoscaler reads: /health 200 once the model is loaded
    # (and the port is not even bound before, under `python -m inference`). No /ready: no real engine has one.
    @app.get("/health")
    async def health() -> JSONResponse:
        if engine.ready:
            return JSONResponse({"status": "ok"})
        return JSONResponse(OpenAIError(503, "model is still loading", type_="service_unavailable").body(),
                            status_code=503)

    # vLLM's sleep-mode endpoints (served with --enable-sleep-mode), on the sim engine
    @app.post("/sleep")
    async def sleep(level: int = 1) -> JSONResponse:
        if level not in (1, 2):
            raise OpenAIError(400, "level must be 1 or 2", param="level")
        try:
            engine.sleep()
        except EngineNotReady as e:
            raise OpenAIError(503, str(e), type_="service_unavailable") from None
        except RuntimeError as e:
            raise OpenAIError(409, str(e), code="busy") from None
        return JSONResponse({"is_sleeping": True})

    @app.post("/wake_up")
    async def wake_up() -> JSONResponse:
        await engine.wake_up()
        return JSONResponse({"is_sleeping": False})

    @app.get("/is_sleeping")
    async def is_sleeping() -> JSONResponse:
        return JSONResponse({"is_sleeping": bool(getattr(engine, "sleeping", False))})

    @app.get("/metrics")
    async def prom() -> Response:
        metrics.observe_stats(engine.stats())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": served_model, "object": "model", "created": 0, "owned_by": "gpufleet"}],
        }

    def check_model(name: str) -> None:
        if name != served_model:
            raise OpenAIError(404, f"The model `{name}` does not exist.", param="model",
                              code="model_not_found")

    async def read(request: Request) -> bytes:
        try:
            return await asyncio.wait_for(request.body(), body_timeout_s)
        except TimeoutError:
            raise OpenAIError(408, f"request body not received within {body_timeout_s:g}s") from None

    async def run(req: ChatCompletionRequest | CompletionRequest, chat: bool, request: Request) -> Response:
        check_model(req.model)
        if engine.stats().waiting >= max_waiting:
            raise OpenAIError(429, f"Too many requests waiting ({max_waiting}); retry shortly.",
                              type_="rate_limit_exceeded", code="queue_full")
        prompt = req.prompt_text()
        prompt_tokens = count_tokens(prompt)
        max_tokens = req.token_budget()
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        t0 = time.monotonic()
        stream = engine.generate(prompt, prompt_tokens, max_tokens)
        # Pull the first token before answering so that "loading" and "too long"
        # become proper 4xx/5xx responses instead of a broken stream.
        try:
            first = await anext(stream)
        except EngineNotReady as e:
            raise OpenAIError(503, str(e), type_="service_unavailable") from None
        except PromptTooLong as e:
            raise OpenAIError(400, str(e), param="max_tokens",
                              code="context_length_exceeded") from None
        ttft = time.monotonic() - t0

        def usage(n: int) -> dict[str, int]:
            return {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                    "total_tokens": prompt_tokens + n}

        def record(n: int, gaps: list[float]) -> None:
            reason = "length"
            metrics.finished(ttft=ttft, e2e=time.monotonic() - t0, gaps=gaps,
                             prompt=prompt_tokens, generated=n, reason=reason)

        if not req.stream:
            parts = [first]
            gaps: list[float] = []

            async def collect() -> None:
                last = time.monotonic()
                async for tok in stream:
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now
                    parts.append(tok)

            async def gone() -> None:
                while not await request.is_disconnected():
                    await asyncio.sleep(DISCONNECT_POLL_S)

            # A client that hangs up frees its batch slot now, not when the generation would have ended.
            work, watch = asyncio.create_task(collect()), asyncio.create_task(gone())
            try:
                await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watch.cancel()
                if not work.done():
                    work.cancel()
                    # the cancelled task must have left the generator before it can be closed ("aclose():
                    # asynchronous generator is already running" otherwise: a 500 for a client that hung up)
                    await asyncio.gather(work, return_exceptions=True)
                    await stream.aclose()
            if not work.done() or work.cancelled():
                return Response(status_code=499)  # nobody is listening
            work.result()
            text = "".join(parts)
            record(len(parts), gaps)
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            return JSONResponse({"id": rid, "object": obj, "created": created,
                                 "model": served_model, "choices": [choice],
                                 "usage": usage(len(parts))})

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        chunk_obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(tok: str | None, finish: str | None, first_chunk: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {}
                if first_chunk:
                    delta["role"] = "assistant"
                if tok is not None:
                    delta["content"] = tok
                c: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish,
                                     "logprobs": None}
            else:
                c = {"index": 0, "text": tok or "", "finish_reason": finish, "logprobs": None}
            body: dict[str, Any] = {"id": rid, "object": chunk_obj, "created": created,
                                    "model": served_model, "choices": [c]}
            if include_usage:
                body["usage"] = None
            return _sse(body)

        async def events() -> AsyncIterator[bytes]:
            n = 1
            gaps: list[float] = []
            last = time.monotonic()
            try:
                yield chunk(first, None, first_chunk=True)
                async for tok in stream:
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now
                    n += 1
                    yield chunk(tok, None)
                yield chunk(None, "length")
                if include_usage:
                    yield _sse({"id": rid, "object": chunk_obj, "created": created,
                                "model": served_model, "choices": [], "usage": usage(n)})
                yield _sse("[DONE]")
                record(n, gaps)
            finally:
                await stream.aclose()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions", openapi_extra=_body(ChatCompletionRequest))
    async def chat(request: Request) -> Response:
        return await run(parse_body(await read(request), ChatCompletionRequest), True, request)

    @app.post("/v1/completions", openapi_extra=_body(CompletionRequest))
    async def completions(request: Request) -> Response:
        return await run(parse_body(await read(request), CompletionRequest), False, request)

    return app

"""The activator: in the request path only while a pool has no serving replica (after Knative's).

nginx sends such a pool's requests here (`/_activator/<pool>/...`, the pool in `X-Gpufleet-Pool`).
Each is held — at most `max_held` per pool, each up to `hold_timeout_s` — and counted as demand at
once (the controller's next tick starts without waiting out its interval). As soon as the controller
publishes a serving replica for the pool, every held request is forwarded to it, streams included,
and the answer relayed as it comes. Once nginx routes to the replicas itself, nothing comes here.

A held stream is answered 200 with SSE comments (`: held`) after `keepalive_after_s`, so that clients
and proxies do not time out; before that, and for non-streamed requests, a hold that times out or a
full queue is an OpenAI-shaped 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from autoscaler.backend_auth import BackendKeys, auth_headers
from autoscaler.config import FleetConfig

log = logging.getLogger("gpufleet.activator")

KEEPALIVE_EVERY_S = 2.0


def _error(status: int, message: str, code: str, retry_after: int | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "service_unavailable" if status == 503 else "invalid_request_error",
                      "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers={"Retry-After": str(retry_after)} if retry_after else None)


def _wants_stream(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("stream") is True


class Activator:
    def __init__(self, cfg: FleetConfig, notify: Callable[[str], None] = lambda pool: None,
                 secret: str | None = None, keys: BackendKeys | None = None) -> None:
        self.cfg = cfg
        self.keys = keys  # what replicas demand: each pool's key, as nginx presents it
        # nginx's secret (autoscaler.credentials.gateway_secret): a request without it is not nginx's, and
        # gets nothing (the activator would forward it to a replica with no key asked)
        self.secret = secret
        self.notify = notify  # a request is held for this pool: tick now (the Controller sets it)
        self.held: dict[str, int] = {p.name: 0 for p in cfg.pools}
        self.forwarded: dict[str, int] = {p.name: 0 for p in cfg.pools}
        self.timed_out: dict[str, int] = {p.name: 0 for p in cfg.pools}
        self._serving: dict[str, tuple[str, ...]] = {}
        self._names: dict[str, str] = {}
        self._rr: dict[str, itertools.count[int]] = {p.name: itertools.count() for p in cfg.pools}
        self._changed = asyncio.Event()
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(3600.0, connect=2.0))

    async def close(self) -> None:
        await self._http.aclose()

    def publish(self, serving: Mapping[str, Sequence[str]], names: Mapping[str, str] | None = None) -> None:
        """pool → base URLs of its serving replicas (called on the loop after each reconcile); names: URL →
        replica id, for the X-Gpufleet-Replica header a forwarded answer carries as nginx's do."""
        new = {p: tuple(urls) for p, urls in serving.items()}
        if names is not None:
            self._names = dict(names)
        if new != self._serving:
            self._serving = new
            self._changed.set()

    async def _replica(self, pool: str, deadline: float, request: Request) -> str | None:
        """A serving replica's URL, or None when the hold times out or the client has gone."""
        while True:
            urls = self._serving.get(pool)
            if urls:
                return urls[next(self._rr[pool]) % len(urls)]
            left = deadline - time.monotonic()
            if left <= 0 or await request.is_disconnected():
                return None
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.25))

    async def _open(self, pool: str, url: str, request: Request, body: bytes) -> httpx.Response | None:
        headers = {"content-type": request.headers.get("content-type", "application/json"),
                   **auth_headers(self.keys, pool)}
        req = self._http.build_request("POST", url + request.url.path, content=body, headers=headers)
        try:
            return await self._http.send(req, stream=True)
        except httpx.HTTPError as e:  # the replica went between publish and now: wait for another
            log.warning("forwarding to %s failed: %s", url, e)
            return None

    async def handle(self, request: Request) -> Response:
        if self.secret is not None and not hmac.compare_digest(
                request.headers.get("x-gpufleet-gateway", "").encode(), self.secret.encode()):
            return _error(403, "The activator answers the gateway only; send requests to the gateway with an API "
                          "key.", "forbidden")
        pool = request.headers.get("x-gpufleet-pool", "")
        p = next((q for q in self.cfg.pools if q.name == pool), None)
        if p is None:
            return _error(404, f"no pool {pool!r}", "not_found")
        if self.held[pool] >= p.max_held:
            return _error(503, f"{self.held[pool]} requests are already waiting for pool {pool} to start; retry "
                          "shortly.", "activator_queue_full", retry_after=max(1, int(p.hold_timeout_s / 4)))
        body = await request.body()
        stream = _wants_stream(body)
        deadline = time.monotonic() + p.hold_timeout_s
        first = deadline if not stream else min(deadline, time.monotonic() + self.cfg.activator.keepalive_after_s)
        self.held[pool] += 1
        self.notify(pool)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.held[pool] -= 1

        try:
            while True:
                url = await self._replica(pool, first, request)
                if url is None:
                    break
                resp = await self._open(pool, url, request, body)
                if resp is not None:
                    release()
                    self.forwarded[pool] += 1
                    headers = _pass_headers(resp)
                    if url in self._names:
                        headers["X-Gpufleet-Replica"] = self._names[url]
                    return StreamingResponse(resp.aiter_raw(), status_code=resp.status_code,
                                             headers=headers, background=BackgroundTask(resp.aclose))
                self._serving = {k: tuple(u for u in v if u != url) for k, v in self._serving.items()}
            if stream and time.monotonic() < deadline and not await request.is_disconnected():
                # A long hold for a stream: commit to 200 and keep the client's connection alive meanwhile.
                return StreamingResponse(self._held_stream(pool, deadline, request, body, release),
                                         media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            release()
            self.timed_out[pool] += 1
            return _error(503, f"No replica of pool {pool} became ready within {p.hold_timeout_s:g}s; retry "
                          "shortly.", "hold_timeout", retry_after=max(1, int(p.hold_timeout_s / 4)))
        except BaseException:
            release()
            raise

    async def _held_stream(self, pool: str, deadline: float, request: Request, body: bytes,
                           release: Callable[[], None]) -> AsyncIterator[bytes]:
        try:
            while time.monotonic() < deadline:
                yield b": held by gpufleet's activator while the pool starts\n\n"
                url = await self._replica(pool, min(deadline, time.monotonic() + KEEPALIVE_EVERY_S), request)
                if url is None:
                    if await request.is_disconnected():
                        return
                    continue
                resp = await self._open(pool, url, request, body)
                if resp is None:
                    continue
                release()
                self.forwarded[pool] += 1
                try:
                    if resp.status_code != 200:  # the status is sent: the error goes as an SSE event
                        yield b"data: " + await resp.aread() + b"\n\n"
                        return
                    async for chunk in resp.aiter_raw():
                        yield chunk
                finally:
                    await resp.aclose()
                return
            self.timed_out[pool] += 1
            err = {"error": {"message": f"No replica of pool {pool} became ready in time; retry shortly.",
                             "type": "service_unavailable", "param": None, "code": "hold_timeout"}}
            yield b"data: " + json.dumps(err).encode() + b"\n\n"
        finally:
            release()


def _pass_headers(resp: httpx.Response) -> dict[str, str]:
    keep = ("content-type", "cache-control", "retry-after", "x-accel-buffering")
    return {k: v for k, v in resp.headers.items() if k.lower() in keep}


def create_activator_app(activator: Activator) -> FastAPI:
    app = FastAPI(title="gpufleet activator", openapi_url=None, docs_url=None, redoc_url=None)

    @app.api_route("/{path:path}", methods=["POST", "GET"])
    async def held(request: Request) -> Any:
        return await activator.handle(request)

    return app

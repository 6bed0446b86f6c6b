"""The replica's key check, as the engines do it (vLLM's VLLM_API_KEY, llama.cpp's LLAMA_API_KEY): a bearer key on
every route but /health, so that nothing but the stack that started it reaches the model. /metrics also takes
the metrics key, Prometheus' one, which opens nothing else. Plain ASGI: a streamed answer and a client's
disconnect pass through untouched."""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

API_KEY_ENV = "GPUFLEET_API_KEY"  # comma-separated, as LLAMA_API_KEY
METRICS_KEY_ENV = "GPUFLEET_METRICS_KEY"
OPEN_PATHS = frozenset({"/health"})  # the readiness contract: whoever starts a replica may ask if it is loaded

_UNAUTHORIZED = json.dumps({"error": {"message": "This replica answers its gpufleet stack only: send requests to "
                                                 "the gateway.", "type": "invalid_request_error", "param": None,
                                      "code": "invalid_api_key"}}).encode()


def keys_from_env(env: MutableMapping[str, str] | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(API keys, metrics keys) as the autoscaler gives them; none: the replica answers keyless."""
    env = os.environ if env is None else env
    return _split(env.get(API_KEY_ENV, "")), _split(env.get(METRICS_KEY_ENV, ""))


def _split(value: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in value.split(",") if k.strip())


def _bearer(scope: Scope) -> bytes:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, key = bytes(value).partition(b" ")
            return key.strip() if scheme.lower() == b"bearer" else b""
    return b""


def _known(key: bytes, keys: Collection[str]) -> bool:
    # every key compared, in constant time each: the answer's timing says nothing of which was close
    found = False
    for k in keys:
        found |= hmac.compare_digest(key, k.encode())
    return found and bool(key)


def require_keys(app: ASGIApp, api_keys: Collection[str], metrics_keys: Collection[str] = ()) -> ASGIApp:
    """app, answering 401 to an HTTP request without one of api_keys (on /metrics, or of metrics_keys).
    No api_keys: app itself, keyless."""
    if not api_keys:
        return app

    async def checked(scope: Scope, receive: Callable[[], Awaitable[Message]],
                      send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] == "http" and scope.get("path") not in OPEN_PATHS:
            key = _bearer(scope)
            allowed = _known(key, api_keys) or (scope.get("path") == "/metrics" and _known(key, metrics_keys))
            if not allowed:
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": _UNAUTHORIZED})
                return
        await app(scope, receive, send)

    return checked

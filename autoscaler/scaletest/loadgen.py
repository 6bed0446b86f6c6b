"""Open-loop load: each request leaves at its scheduled time whether or not
earlier ones have finished (a closed loop hides queueing). Every request is
timed (TTFT, inter-token gaps, end to end); a stream that ends without
`data: [DONE]` counts as failed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import httpx


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the start
    prompt_tokens: int = 32
    max_tokens: int = 16
    stream: bool = True


@dataclass
class Result:
    at: float  # scheduled offset
    sent: float  # wall clock
    status: int = 0
    ok: bool = False
    error: str | None = None
    stream: bool = True
    ttft: float | None = None
    e2e: float | None = None
    first_byte_at: float | None = None  # wall clock
    tokens: int = 0
    gaps: list[float] = field(default_factory=list)
    replica: str | None = None  # the replica that served it (the gateway's X-Gpufleet-Replica)
    bytes: int = 0
    exc: Exception | None = field(default=None, repr=False)
    # resent after the connection closed before any response byte (only with retries > 0: by default a request
    # dropped is a failed one, whatever a client library would have done about it)
    retries: int = 0
    rid: str = ""  # the X-Request-Id it was sent with (nginx's access log writes it: rid=)
    pool: str | None = None  # the simulator with several pools: the pool the request asked for
    served_by: str | None = None  # ...and the pool that served it (another one: a fallback)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("gaps")
        d.pop("exc")
        d["max_gap"] = max(self.gaps) if self.gaps else None
        return d


def bearer(secret: str | None) -> dict[str, str]:
    """The Authorization header for an API key or admin token; none without one."""
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def _prompt(n_tokens: int, i: int) -> str:
    # ~4 characters a token, the replica's own estimate
    return (f"request {i}: " + "lorem ipsum dolor sit amet " * (n_tokens // 6 + 1))[: max(4, n_tokens * 4)]


# Errors that mean the request never reached a server: safe to send again, as the openai client does.
_NOT_SENT = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError)


def _complete(finish: str | None, tokens: int, max_tokens: int) -> bool:
    """An answer the server finished: every token asked for, or a stop the model chose (a real model may end
    early on its end-of-sequence token; the sim engine never does)."""
    return (finish == "length" and tokens == max_tokens) or (finish == "stop" and 0 < tokens <= max_tokens)


async def one_request(client: httpx.AsyncClient, url: str, model: str, a: Arrival, i: int,
                      retries: int = 0, rid: str = "") -> Result:
    for attempt in range(retries + 1):
        res = await _attempt(client, url, model, a, i, rid or f"lg-{i}")
        res.retries = attempt
        if res.ok or res.status != 0 or res.bytes or not isinstance(res.exc, _NOT_SENT):
            return res
    return res


async def _attempt(client: httpx.AsyncClient, url: str, model: str, a: Arrival, i: int, rid: str) -> Result:
    sent = time.time()
    t0 = time.monotonic()
    res = Result(at=a.at, sent=sent, stream=a.stream, rid=rid)
    body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": _prompt(a.prompt_tokens, i)}],
                               "max_tokens": a.max_tokens, "stream": a.stream}
    if a.stream:
        # the server's own count of what it generated: a chunk is not a token (llama.cpp merges the byte tokens
        # of one character into one chunk)
        body["stream_options"] = {"include_usage": True}
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                                 headers={"X-Request-Id": rid}) as r:
            res.status = r.status_code
            res.replica = r.headers.get("x-gpufleet-replica") or None
            if r.status_code != 200:
                res.error = (await r.aread()).decode(errors="replace")[:300]
                return res
            if not a.stream:
                raw = await r.aread()
                res.bytes = len(raw)
                res.first_byte_at = time.time()
                # no stream, no first token to see: TTFT stays None, only end-to-end counts
                res.e2e = time.monotonic() - t0
                data = json.loads(raw)
                res.tokens = int(data["usage"]["completion_tokens"])
                finish = data["choices"][0].get("finish_reason")
                res.ok = _complete(finish, res.tokens, a.max_tokens)
                if not res.ok:
                    res.error = f"short completion: {res.tokens}/{a.max_tokens} tokens, finish_reason {finish}"
                return res
            done = False
            last = t0  # the first token's gap is its TTFT, counted apart
            finish = None
            usage_tokens: int | None = None
            chunks = 0
            async for line in r.aiter_lines():
                res.bytes += len(line) + 1
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    done = True
                    break
                chunk = json.loads(payload)
                if chunk.get("usage"):
                    usage_tokens = int(chunk["usage"]["completion_tokens"])
                if chunk.get("choices"):
                    finish = chunk["choices"][0].get("finish_reason") or finish
                if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                    now = time.monotonic()
                    if res.ttft is None:
                        res.ttft = now - t0
                        res.first_byte_at = time.time()
                    else:
                        res.gaps.append(now - last)
                    last = now
                    chunks += 1
            res.e2e = time.monotonic() - t0
            res.tokens = usage_tokens if usage_tokens is not None else chunks
            res.ok = done and _complete(finish, res.tokens, a.max_tokens)
            if not res.ok:
                res.error = f"stream cut: done={done} finish_reason={finish} tokens={res.tokens}/{a.max_tokens}"
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
        res.exc = e
        res.error = f"{type(e).__name__}: {e}"
        res.e2e = time.monotonic() - t0
    return res


async def run_open_loop(
    url: str,
    model: str,
    arrivals: Sequence[Arrival],
    *,
    max_in_flight: int = 512,
    timeout_s: float = 120.0,
    on_result: Callable[[Result], None] | None = None,
    api_key: str | None = None,
    retries: int = 0,
    rid_prefix: str | None = None,
) -> list[Result]:
    """Send every arrival on schedule; a request beyond max_in_flight is counted as failed (client-side
    overload), not delayed, so the schedule stays open-loop. Each carries X-Request-Id `<rid_prefix><n>`.
    retries: resend one whose connection closed before any response byte (0: it is a failure)."""
    prefix = rid_prefix if rid_prefix is not None else f"lg{time.time_ns() % 10**9:09d}-"
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    timeout = httpx.Timeout(timeout_s, connect=5.0)
    results: list[Result] = []
    in_flight = 0
    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=bearer(api_key)) as client:
        start = time.monotonic()

        async def fire(a: Arrival, i: int) -> None:
            nonlocal in_flight
            if in_flight >= max_in_flight:
                r = Result(at=a.at, sent=time.time(), stream=a.stream, error="client in-flight cap reached",
                           rid=f"{prefix}{i}")
            else:
                in_flight += 1
                try:
                    r = await one_request(client, url, model, a, i, retries=retries, rid=f"{prefix}{i}")
                finally:
                    in_flight -= 1
            results.append(r)
            if on_result:
                on_result(r)

        tasks = []
        for i, a in enumerate(sorted(arrivals, key=lambda a: a.at)):
            delay = start + a.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(fire(a, i)))
        await asyncio.gather(*tasks)
    return results


def constant_rate(rate: float, start: float, duration: float, prompt_tokens: int = 32, max_tokens: int = 16,
                  stream: bool = True) -> list[Arrival]:
    """Evenly spaced arrivals (deterministic: a test should not depend on Poisson luck)."""
    n = int(rate * duration)
    return [Arrival(start + i / rate, prompt_tokens, max_tokens, stream) for i in range(n)]

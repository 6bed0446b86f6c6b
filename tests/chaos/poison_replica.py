"""A real replica (the sim engine's app) whose /metrics the chaos suite can poison while it runs.

`python -m tests.chaos.poison_replica` takes `python -m inference`'s arguments. When the file
`$GPUFLEET_CHAOS_DIR/<replica id>` exists, /metrics answers what it names instead of the truth:
`nan` / `inf` (a non-finite vllm:num_requests_running), `nole` (a TTFT bucket without `le`),
`garbage` (text no parser reads), `drip` (the real page, one byte every 0.3 s).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from inference.__main__ import main as replica_main

POISON = {
    "nan": "vllm:num_requests_running NaN\nvllm:num_requests_waiting 0\n",
    "inf": "vllm:num_requests_running +Inf\nvllm:num_requests_waiting 0\n",
    "nole": "# TYPE vllm:time_to_first_token_seconds histogram\nvllm:time_to_first_token_seconds_bucket 3\n"
            "vllm:num_requests_running 0\n",
    "garbage": "vllm:num_requests_running{{{ 3\n\x00\n",
}


def mode() -> str | None:
    d, rid = os.environ.get("GPUFLEET_CHAOS_DIR"), os.environ.get("GPUFLEET_REPLICA_ID")
    if not d or not rid:
        return None
    try:
        return (Path(d) / rid).read_text().strip() or None
    except OSError:
        return None


def poisoned(app):  # noqa: ANN001, ANN201
    @app.middleware("http")
    async def poison(request: Request, call_next):  # noqa: ANN001, ANN202
        m = mode() if request.url.path == "/metrics" else None
        if m in POISON:
            return PlainTextResponse(POISON[m])
        if m == "drip":
            real: Response = await call_next(request)
            body = b"".join([c async for c in real.body_iterator])  # type: ignore[attr-defined]

            async def slowly() -> AsyncIterator[bytes]:
                for i in range(len(body)):
                    await asyncio.sleep(0.3)
                    yield body[i:i + 1]

            return StreamingResponse(slowly(), media_type="text/plain")
        return await call_next(request)

    return app


if __name__ == "__main__":
    replica_main(sys.argv[1:], wrap=poisoned)

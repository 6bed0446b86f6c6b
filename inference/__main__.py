"""`python -m inference`: run one replica."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI

from inference.app import create_app
from inference.auth import keys_from_env, require_keys
from inference.engines import PROFILES, SimEngine


def main(argv: list[str] | None = None, wrap: Callable[[FastAPI], Any] | None = None) -> None:
    """wrap: an ASGI wrapper around the app (the chaos suite's poisoned /metrics)."""
    ap = argparse.ArgumentParser(prog="python -m inference", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", required=True, help="served model name (the OpenAI `model` field)")
    ap.add_argument("--engine", default="sim", choices=["sim"])
    ap.add_argument("--profile", default="tiny", choices=sorted(PROFILES))
    ap.add_argument("--load-time", type=float, default=None, help="override the profile's load time")
    ap.add_argument("--max-num-seqs", type=int, default=None)
    ap.add_argument("--step-base", type=float, default=None, help="decode step at batch 1, seconds")
    ap.add_argument("--step-per-seq", type=float, default=None, help="extra step time per sequence")
    ap.add_argument("--kv-capacity", type=int, default=None, help="KV cache size in tokens")
    ap.add_argument("--wake-time", type=float, default=None, help="sleep mode: seconds to wake up")
    ap.add_argument("--max-waiting", type=int, default=None,
                    help="requests queued beyond the batch slots before 429 (default 1024)")
    ap.add_argument("--replica-id", default=None, help="set by the autoscaler; shows in ps")
    args = ap.parse_args(argv)
    profile = PROFILES[args.profile].with_overrides(
        load_time_s=args.load_time,
        max_num_seqs=args.max_num_seqs,
        step_base_s=args.step_base,
        step_per_seq_s=args.step_per_seq,
        kv_capacity_tokens=args.kv_capacity,
        wake_s=args.wake_time,
    )
    engine = SimEngine(profile)
    app = create_app(engine, args.model, **({"max_waiting": args.max_waiting} if args.max_waiting else {}))
    # the keys the autoscaler gave (GPUFLEET_API_KEY, GPUFLEET_METRICS_KEY); none: keyless, as a bare vLLM
    api_keys, metrics_keys = keys_from_env()
    served = require_keys(wrap(app) if wrap else app, api_keys, metrics_keys)
    asyncio.run(_serve(engine, served, args.host, args.port))


async def _serve(engine: SimEngine, app: Any, host: str, port: int) -> None:
    # vLLM's contract: the model loads first, the port is bound after, so that /health answering at all
    # means loaded (a connection refused means loading). The readiness probe relies on nothing else.
    await engine.load()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=5))
    await server.serve()


if __name__ == "__main__":
    main()

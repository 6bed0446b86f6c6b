"""`python -m inference`: run one replica."""

from __future__ import annotations

import argparse

import uvicorn

from inference.app import create_app
from inference.engines import PROFILES, SimEngine


def main(argv: list[str] | None = None) -> None:
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
    app = create_app(SimEngine(profile), args.model,
                     **({"max_waiting": args.max_waiting} if args.max_waiting else {}))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()

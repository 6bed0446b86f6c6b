"""The `gpufleet` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from autoscaler.config import ConfigError, load_config


def _up(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if not args.local:
        print("gpufleet up: only --local is available from the CLI; for Docker use "
              "`docker compose up -d` (see README)", file=sys.stderr)
        return 2
    from autoscaler.local_stack import run_local

    asyncio.run(run_local(cfg, args.run_dir))
    return 0


def _validate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    print(f"{args.config or 'built-in default'}: OK, pools: "
          + ", ".join(f"{p.name} ({p.model})" for p in cfg.pools))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpufleet", description="Elastic LLM serving on one GPU host.")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="start the stack in the foreground")
    up.add_argument("--local", action="store_true", help="replicas, nginx and Prometheus as host processes")
    up.add_argument("--config", type=Path, default=None, help="fleet.yaml (default: one CPU sim pool)")
    up.add_argument("--run-dir", type=Path, default=Path("run"),
                    help="state, generated configs and logs (default ./run)")
    up.set_defaults(func=_up)

    val = sub.add_parser("validate", help="check a fleet.yaml and exit")
    val.add_argument("config", type=Path, nargs="?", default=None)
    val.set_defaults(func=_validate)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"gpufleet: bad config, not starting:\n{e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"gpufleet: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

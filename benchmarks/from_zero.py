"""First-token latency of the first request to a pool at zero active replicas, three ways:
a cold start, a sleeping warm replica (woken), an awake warm replica (activated).

    python -m benchmarks.from_zero [--repeat 3] [--load-time 6] [--wake-time 1]

Each mode runs its own `gpufleet up --local` (sim engine, tiny profile with the given load and wake
times, min_replicas 0, scale_to_zero_after_s 3): wait until the pool has no active replica (and its
warm replica is ready and in the mode's state), send one streamed request with the openai client,
time its first token; repeat.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(pred: Any, timeout: float) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            v = pred()
            if v:
                return v
        time.sleep(0.1)
    raise TimeoutError


def run_mode(mode: str, repeat: int, load_s: float, wake_s: float) -> list[float]:
    warm = {"cold": {"min": 0, "max": 0}, "asleep": {"min": 1, "max": 1, "asleep": 1},
            "awake": {"min": 1, "max": 1}}[mode]
    gw, admin, act = _port(), _port(), _port()
    cfg = {"gateway": {"port": gw}, "admin": {"port": admin}, "activator": {"port": act},
           "prometheus": {"enabled": False}, "gpus": {"source": "none"},
           "pools": [{"name": "chat", "model": "tiny-chat", "min_replicas": 0, "max_replicas": 2,
                      "warm_pool": warm, "scale_to_zero_after_s": 3, "targets": {"concurrency": 4},
                      "sim": {"profile": "tiny", "load_time_s": load_s, "wake_time_s": wake_s,
                              "max_num_seqs": 4, "step_base_s": 0.02},
                      "behavior": {"scale_down": {"stabilization_s": 1, "policies": []}}}]}
    out: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "fleet.yaml"
        f.write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen([sys.executable, "-m", "autoscaler.cli", "up", "--local", "--config", str(f),
                                 "--run-dir", str(Path(tmp) / "run")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            c = openai.OpenAI(base_url=f"http://127.0.0.1:{gw}/v1", api_key="x", max_retries=0, timeout=120)

            def at_zero() -> bool:
                reps = httpx.get(f"http://127.0.0.1:{admin}/status", timeout=2).json()["pools"]["chat"]["replicas"]
                if any(r["role"] in ("active", "starting", "draining") for r in reps):
                    return False
                warm_ok = [r for r in reps if r["role"] == "warm" and r["ready"]
                           and r["sleeping"] == (mode == "asleep")]
                return mode == "cold" or bool(warm_ok)

            for _ in range(repeat):
                _until(at_zero, 120)
                time.sleep(0.5)
                t0 = time.monotonic()
                stream = c.chat.completions.create(model="tiny-chat", max_tokens=4, stream=True,
                                                   messages=[{"role": "user", "content": "hi"}])
                for ch in stream:
                    if ch.choices and ch.choices[0].delta.content:
                        out.append(time.monotonic() - t0)
                        break
                list(stream)
        finally:
            proc.terminate()
            proc.wait(60)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--load-time", type=float, default=6.0)
    ap.add_argument("--wake-time", type=float, default=1.0)
    a = ap.parse_args()
    print(f"| from zero active (load {a.load_time:g} s, wake {a.wake_time:g} s) | first token p50 | min | max | n |")
    print("|---|---|---|---|---|")
    for mode, label in (("cold", "cold start"), ("asleep", "sleeping warm replica"),
                        ("awake", "awake warm replica")):
        xs = run_mode(mode, a.repeat, a.load_time, a.wake_time)
        print(f"| {label} | {statistics.median(xs):.2f} s | {min(xs):.2f} s | {max(xs):.2f} s | {len(xs)} |",
              flush=True)


if __name__ == "__main__":
    main()

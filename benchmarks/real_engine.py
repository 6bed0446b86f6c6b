"""A real third-party engine (llama.cpp's server) next to the sim engine, on the same burst.

    python -m benchmarks.real_engine [--repeat 2]

Each run is its own `gpufleet up --local` with one pool (min 1, warm 1, max 2, target concurrency 2):
`llamacpp` (build/llama-server/llama-server, the tiny random-weight GGUF, 2 slots, 1 thread: ~4.6 req/s
at 100 tokens on a 2-core host) or `sim` (2 slots, a step time giving about the same capacity). Traffic:
2 req/s for 5 s, 12 req/s for 15 s (streamed), 1 req/s for 15 s, 100 tokens each. Reported: cold start
(start to the engine's readiness probe answering, from the `ready` events), the scale-up decision after
the burst began, warm activation (decision to the first token from the activated replica), requests,
failures, client retries, TTFT p50/p95 of the burst. Needs `make llama-server`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from autoscaler.scaletest.loadgen import constant_rate, run_open_loop
from benchmarks.from_zero import _port, _until

ROOT = Path(__file__).resolve().parent.parent
BASE, BURST, AFTER = 5.0, 15.0, 15.0


def pool(engine: str, model: Path) -> dict[str, Any]:
    common = {"name": "chat", "model": "tiny", "gpus_per_replica": 0, "min_replicas": 1, "max_replicas": 2,
              "warm_pool": {"min": 1, "max": 1}, "targets": {"concurrency": 2},
              "behavior": {"scale_down": {"stabilization_s": 8, "policies": [{"type": "replicas", "value": 2,
                                                                                 "period_s": 5}]}}}
    if engine == "llamacpp":
        return common | {"engine": "llamacpp", "executable": str(ROOT / "build/llama-server/llama-server"),
                         "model_path": str(model), "args": ["--parallel", "2", "--threads", "1"]}
    # 2 slots, 100 tokens at ~4.3 ms a step: ~0.43 s a request, ~4.6 req/s, as the llama.cpp replica
    return common | {"engine": "sim", "sim": {"profile": "tiny", "load_time_s": 1.0, "max_num_seqs": 2,
                                               "step_base_s": 0.0043, "step_per_seq_s": 0.0}}


def run(engine: str, model: Path) -> dict[str, Any]:
    gw, admin, act = _port(), _port(), _port()
    cfg = {"gateway": {"port": gw, "auth": {"enabled": False}, "edge_log_port": _port(), "status_port": _port()},
           "admin": {"port": admin}, "activator": {"port": act}, "prometheus": {"enabled": False},
           "gpus": {"source": "none"}, "pools": [pool(engine, model)]}
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "fleet.yaml"
        f.write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen([sys.executable, "-m", "autoscaler.cli", "up", "--local", "--config", str(f),
                                 "--run-dir", str(Path(tmp) / "run")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, cwd=ROOT)
        token = None
        try:
            tok = Path(tmp) / "run/admin-token"
            token = _until(lambda: tok.exists() and tok.read_text().strip(), 30)
            h = {"Authorization": f"Bearer {token}"}

            def status() -> dict[str, Any]:
                return httpx.get(f"http://127.0.0.1:{admin}/status", headers=h, timeout=5).json()

            _until(lambda: sum(1 for r in status()["pools"]["chat"]["replicas"] if r["ready"]) >= 2, 120)
            events: dict[tuple, dict] = {}
            stop = threading.Event()

            def poll() -> None:
                while not stop.is_set():
                    try:
                        for e in status()["events"]:
                            events[(e["t"], e["kind"], e.get("replica"))] = e
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.25)

            watcher = threading.Thread(target=poll, daemon=True)
            watcher.start()
            arrivals = (constant_rate(2.0, 0.0, BASE, max_tokens=100)
                        + constant_rate(12.0, BASE, BURST, max_tokens=100, stream=True)
                        + constant_rate(1.0, BASE + BURST, AFTER, max_tokens=100))
            t0 = time.time()
            results = asyncio.run(run_open_loop(f"http://127.0.0.1:{gw}", "tiny", arrivals))
            time.sleep(1)
            stop.set()
            watcher.join()
        finally:
            proc.terminate()
            proc.wait(60)
    ev = sorted(events.values(), key=lambda e: e["t"])
    ready = [e["load_s"] for e in ev if e["kind"] == "ready"]
    up = next((e for e in ev if e["kind"] == "decision" and e["t"] >= t0 + BASE and e["desired_active"] >= 2), None)
    act_ev = next((e for e in ev if e["kind"] == "activate" and up and e["t"] >= up["t"]), None)
    first = min((r.first_byte_at for r in results if act_ev and r.replica == act_ev["replica"] and r.first_byte_at),
                default=None)
    burst = sorted(r.ttft for r in results if r.stream and r.ttft is not None)
    return {"engine": engine, "cold_start_s": ready, "decision_s": round(up["t"] - t0 - BASE, 2) if up else None,
            "activation_s": round(first - up["t"], 3) if first and up else None, "requests": len(results),
            "failed": sum(1 for r in results if not r.ok), "retried": sum(1 for r in results if r.retries),
            "ttft_p50_s": round(statistics.median(burst), 3) if burst else None,
            "ttft_p95_s": round(burst[int(0.95 * (len(burst) - 1))], 3) if burst else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    binary = ROOT / "build/llama-server/llama-server"
    if not binary.exists():
        sys.exit("build llama.cpp's server first: make llama-server")
    sys.path.insert(0, str(ROOT / "third_party/llama-server"))
    from tiny_gguf import write  # type: ignore[import-not-found]

    with tempfile.TemporaryDirectory() as tmp:
        model = write(Path(tmp) / "tiny-llama.gguf")
        rows = [run(engine, model) for _ in range(args.repeat) for engine in ("llamacpp", "sim")]
    print("| engine | cold start (s) | scale-up decided after burst (s) | warm activation (s) | requests | failed "
          "| retried | burst TTFT p50 / p95 (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['engine']} | {', '.join(f'{x:.2f}' for x in r['cold_start_s'])} | {r['decision_s']} | "
              f"{r['activation_s']} | {r['requests']} | {r['failed']} | {r['retried']} | "
              f"{r['ttft_p50_s']} / {r['ttft_p95_s']} |")


if __name__ == "__main__":
    main()

"""A burst on a high-priority pool while a low-priority one holds the GPUs, live on the local stack.

    python -m benchmarks.reclaim_live [--repeat 3] [--load-time 5]

`gpufleet up --local` with 3 GPU slots and two pools (sim engine): `low` (priority 0, min 1, max 2)
and `high` (priority 10, min 1, max 3). 4 openai clients keep `low` at 2 replicas (all 3 slots
held); then 6 clients hit `high`. Measured from the burst's start: when the autoscaler claimed a
low replica (`reclaim`), when that replica had drained and stopped, when high's new replica was
routed; and, per pool, requests, failures and e2e latency. Requests are 20 tokens (~1 s) each.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.helpers import Clients, LocalStack, sim_pool, wait_for


def once(tmp: Path, load_time: float) -> dict[str, float]:
    quick = {"profile": "tiny", "load_time_s": load_time, "max_num_seqs": 4, "step_base_s": 0.05,
             "step_per_seq_s": 0.0}
    low = sim_pool(name="low", model="low-model", priority=0, gpus_per_replica=1, min_replicas=1, max_replicas=2,
                   warm_pool={"min": 0, "max": 0}, sim=quick, targets={"concurrency": 2},
                   behavior={"scale_down": {"stabilization_s": 300}})
    high = sim_pool(name="high", model="high-model", priority=10, gpus_per_replica=1, min_replicas=1,
                    max_replicas=3, warm_pool={"min": 0, "max": 0}, sim=quick, targets={"concurrency": 2})
    stack = LocalStack(tmp, {"gpus": {"source": "none", "virtual_slots": 3}, "pools": [low, high]})
    stack.start(active=0, timeout=60)
    try:
        wait_for(lambda: all(stack.replicas(p, role="active", ready=True) for p in ("low", "high"))
                 and stack.gateway_serves(), 60, "both pools serving")
        with Clients(stack.url, 4, "low-model") as lo:
            wait_for(lambda: len(stack.replicas("low", role="active", ready=True)) == 2, 60, "low at 2")
            time.sleep(2)
            t0_wall = time.time()
            with Clients(stack.url, 6, "high-model") as hi:
                wait_for(lambda: len(stack.replicas("high", role="active", ready=True)) == 2, 90, "high at 2")
                routed = wait_for(lambda: [e for e in stack.events("routed") if e["pool"] == "high"
                                           and e["t"] > t0_wall], 30, "high's new replica routed")
                time.sleep(5)
            events = stack.events()
        rec = next(e for e in events if e["kind"] == "reclaim" and e["t"] >= t0_wall)
        stop = next(e for e in events if e["kind"] == "stop" and e.get("replica") == rec["replica"])
        out = {"reclaim_s": rec["t"] - t0_wall, "victim_stopped_s": stop["t"] - t0_wall,
               "high_routed_s": routed[0]["t"] - t0_wall}
        for name, c in (("low", lo), ("high", hi)):
            e2e = [a for a in c.answers if a.error is None]
            out[f"{name}_requests"] = len(c.answers)
            out[f"{name}_failed"] = sum(1 for a in c.answers if a.error)
            out[f"{name}_ok"] = len(e2e)
        return out
    finally:
        stack.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--load-time", type=float, default=5.0)
    a = ap.parse_args()
    runs = []
    for i in range(a.repeat):
        with tempfile.TemporaryDirectory(prefix="gpufleet-reclaim-") as d:
            r = once(Path(d), a.load_time)
        runs.append(r)
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in r.items()), flush=True)
    print("\n| from the burst's start | median | runs |\n|---|---:|---|")
    for k in ("reclaim_s", "victim_stopped_s", "high_routed_s"):
        vals = [r[k] for r in runs]
        print(f"| {k} | {statistics.median(vals):.2f} s | {', '.join(f'{v:.2f}' for v in vals)} |")
    for k in ("low", "high"):
        print(f"| {k}: requests / failed | {sum(r[f'{k}_requests'] for r in runs)} / "
              f"{sum(r[f'{k}_failed'] for r in runs)} | |")


if __name__ == "__main__":
    main()

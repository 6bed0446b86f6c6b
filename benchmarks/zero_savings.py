"""GPU-seconds saved by scaling to zero, on a real trace with idle periods, in the simulator.

    python -m benchmarks.zero_savings [--fleet benchmarks/fleets/h100-x8-llama3-8b.yaml] [--minutes 60]

The Azure LLM inference conversation trace (traces/) is a busy service, never idle; to give it the idle
periods of a team's internal model, only its first 2 minutes of every 10 are kept (its real arrivals and
lengths). The same fleet runs three ways: min_replicas 1 with a warm replica (the usual setting),
min_replicas 1 without one, and min_replicas 0 (scale_to_zero_after_s 60, the activator holding the
first requests of each burst while a replica cold-starts).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autoscaler.config import load_config
from autoscaler.scaletest.loadgen import Arrival
from autoscaler.scaletest.report import quantile, summarize
from autoscaler.scaletest.scenario import Scenario
from autoscaler.scaletest.traces import load_trace
from autoscaler.sim.run import simulate

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fleet", type=Path, default=ROOT / "benchmarks/fleets/h100-x8-llama3-8b.yaml")
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--period", type=float, default=600, help="one burst (the trace's first 120 s) per period")
    a = ap.parse_args()
    cfg = load_config(a.fleet)
    reqs = [r for r in load_trace(ROOT / "traces/AzureLLMInferenceTrace_conv.csv")
            if r.t < a.minutes * 60 and r.t % a.period < 120]
    arr = [Arrival(at=r.t, prompt_tokens=min(r.prompt_tokens, 6000), max_tokens=max(1, min(r.output_tokens, 1000)))
           for r in reqs]
    sc = Scenario(name="azure-bursts", duration_s=a.minutes * 60, profile={"type": "step", "base_rps": 1,
                                                                          "peak_rps": 1, "at_s": 0})
    base = cfg.pools[0]
    ways = {
        "min 1 + 1 warm": base.model_copy(update={"min_replicas": 1,
                                                  "warm_pool": base.warm_pool.model_copy(update={"min": 1})}),
        "min 1, no warm": base.model_copy(update={"min_replicas": 1,
                                                  "warm_pool": base.warm_pool.model_copy(update={"min": 0, "max": 0})}),
        "min 0 (to zero after 60 s)": base.model_copy(update={
            "min_replicas": 0, "scale_to_zero_after_s": 60.0,
            "warm_pool": base.warm_pool.model_copy(update={"min": 0, "max": 0})}),
        "min 0, scale-down window 60 s": base.model_copy(update={
            "min_replicas": 0, "scale_to_zero_after_s": 60.0,
            "warm_pool": base.warm_pool.model_copy(update={"min": 0, "max": 0}),
            "behavior": base.behavior.model_copy(update={"scale_down": base.behavior.scale_down.model_copy(
                update={"stabilization_s": 60.0})})}),
    }
    print(f"{len(arr)} requests in {a.minutes:g} min ({a.fleet.name}); 2 busy minutes in every "
          f"{a.period / 60:g}\n")
    print("| fleet | GPU-seconds | vs min 1 + warm | failed | TTFT p50 | TTFT p95 | TTFT p99 |")
    print("|---|---|---|---|---|---|---|")
    first = None
    for name, pool in ways.items():
        fleet = cfg.model_copy(update={"pools": (pool,)})
        sim = simulate(fleet, arr, duration_s=a.minutes * 60)
        s = summarize(sc, sim.results, sim.timeline, 0.0, sim.end_s, sim.pool, {"started_at": 0.0})
        gs = sum((s["gpu_seconds"] if pool.gpus_per_replica else s["replica_seconds"]).values())
        first = first or gs
        ttft = [r.ttft for r in sim.results if r.ok and r.ttft is not None]
        print(f"| {name} | {gs:,.0f} | {100 * (gs / first - 1):+.0f} % | {s['failed']} | "
              f"{quantile(ttft, 0.5):.2f} s | {quantile(ttft, 0.95):.2f} s | {quantile(ttft, 0.99):.2f} s |",
              flush=True)


if __name__ == "__main__":
    main()

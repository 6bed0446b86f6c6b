"""Several models on one 8-GPU host whose traffic peaks at different times, in the simulator:
gpufleet with priorities and reclaim against a static partition of the GPUs.

    python -m benchmarks.multi_model [--minutes 60] [--json OUT]

Host: 8x H100 SXM (the real `nvidia-smi topo -m` of AWS p5 in tests/fixtures/topology). Pools:
`large` Llama-3-70B on 4 GPUs (priority 100), `small` Llama-3-8B on 1 GPU (50), `batch` Llama-3-8B
on 1 GPU (0). Traffic, from the real traces in traces/, each pool peaking in its own third of the
hour: there its whole trace hour is compressed into 20 minutes (3x the trace's rate; `large` gets half
of the requests), and a sixth of that in the rest of the hour. `large` and `small` replay the Azure
conversation trace, `batch` the Mooncake trace (prompts capped at 6000 tokens). The same arrivals
run against:

- static partition: 4 / 2 / 2 GPUs, always on (what a team sets by hand without an autoscaler);
- gpufleet, equal priorities;
- gpufleet, priorities 100 / 50 / 0 (a busier higher pool reclaims GPUs, by drain);
- the same, plus `large` overflowing to `small` when saturated, answers capped at 256 tokens.

Per pool: SLO attainment (TTFT <= 2 s and e2e <= 60 s; a failed request is a miss), failures, TTFT p95
and GPU-seconds; and the host's GPU-seconds in all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from autoscaler.config import FleetConfig, parse_config
from autoscaler.scaletest.loadgen import Arrival, Result
from autoscaler.scaletest.report import quantile, summarize
from autoscaler.scaletest.scenario import Scenario
from autoscaler.scaletest.traces import load_trace
from autoscaler.sim.compare import slo_attainment
from autoscaler.sim.run import simulate

ROOT = Path(__file__).resolve().parent.parent
TOPO = ROOT / "tests/fixtures/topology/hgx-8xh100-sxm-nv18-aws-p5.txt"
SLO = {"ttft_p95_s": 2.0, "e2e_p95_s": 60.0}


def pools(priorities: bool, overflow: bool) -> list[dict[str, Any]]:
    def pr(n: int) -> int:
        return n if priorities else 0

    large: dict[str, Any] = {
        "name": "large", "model": "llama3-70b", "sim": {"profile": "llama3-70b-4xh100"}, "gpus_per_replica": 4,
        "gpu_min_link": "NVLINK", "priority": pr(100), "min_replicas": 1, "max_replicas": 2,
        "warm_pool": {"min": 0, "max": 0}, "targets": {"concurrency": 48}}
    if overflow:
        large |= {"saturation": {"waiting_per_replica": 8}, "fallback": [{"pool": "small", "max_tokens": 256}]}
    return [
        large,
        {"name": "small", "model": "llama3-8b", "sim": {"profile": "llama3-8b-h100"}, "gpus_per_replica": 1,
         "priority": pr(50), "min_replicas": 1, "max_replicas": 4, "warm_pool": {"min": 0, "max": 0},
         "targets": {"concurrency": 64}},
        {"name": "batch", "model": "llama3-8b-batch", "sim": {"profile": "llama3-8b-h100"}, "gpus_per_replica": 1,
         "priority": pr(0), "min_replicas": 1, "max_replicas": 4, "warm_pool": {"min": 0, "max": 0},
         "targets": {"concurrency": 32}, "scale_to_zero_after_s": 120, "hold_timeout_s": 240},
    ]


def static_partition() -> list[dict[str, Any]]:
    out = []
    for p, n in zip(pools(False, False), (1, 2, 2), strict=True):
        out.append(p | {"min_replicas": n, "max_replicas": n})
    return out


def fleet(ps: list[dict[str, Any]]) -> FleetConfig:
    return parse_config({"gpus": {"source": "topology", "topology_file": str(TOPO)}, "pools": ps})


def arrivals(minutes: float, scale: dict[str, float] | None = None,
             slots: dict[str, int] | None = None) -> dict[str, list[Arrival]]:
    """Each pool peaks in its third of every hour (`slots`): a whole trace hour compressed into the 20
    minutes (3x its rate) times `scale`; and a sixth of its rate in the other two thirds."""
    slots = {"large": 0, "small": 1, "batch": 2} | (slots or {})
    scale = {"large": 0.3, "small": 1.0, "batch": 1.0} | (scale or {})
    azure = load_trace(ROOT / "traces/AzureLLMInferenceTrace_conv.csv")
    moon = load_trace(ROOT / "traces/mooncake_synthetic_trace.jsonl")
    end = minutes * 60
    third = 1200.0

    def arr(r: Any, at: float) -> Arrival:
        return Arrival(at=at, prompt_tokens=min(r.prompt_tokens, 6000), max_tokens=max(1, min(r.output_tokens, 1000)))

    def shaped(reqs: list[Any], slot: int, rate: float) -> list[Arrival]:
        span = reqs[-1].t + 1e-9
        out = []
        for hour in range(int(end // (3 * third)) + 1):
            base = hour * 3 * third
            for i, r in enumerate(reqs):
                # the peak: every request, the trace's time compressed into this pool's third, thinned to rate
                if (i * 7919) % 1000 < 1000 * rate:
                    out.append(arr(r, base + slot * third + r.t / span * third))
                # the rest of the hour: a sixth of the peak's requests, spread over the other two thirds
                if (i * 7919) % 6000 < 1000 * rate:
                    at = base + ((slot + 1) % 3) * third + r.t / span * 2 * third
                    out.append(arr(r, at if at < base + 3 * third else at - 3 * third))
        return sorted((a for a in out if a.at < end), key=lambda a: a.at)

    trace = {"large": azure, "small": azure, "batch": moon}
    return {pn: shaped(trace[pn], slots[pn], scale[pn]) for pn in ("large", "small", "batch")}


def run(name: str, cfg: FleetConfig, by_pool: dict[str, list[Arrival]], minutes: float) -> dict[str, Any]:
    sim = simulate(cfg, [], by_pool=by_pool, duration_s=minutes * 60)
    sc = Scenario(name="multi-model", duration_s=minutes * 60, slo=SLO,
                  profile={"type": "step", "base_rps": 1, "peak_rps": 1, "at_s": 0})
    out: dict[str, Any] = {"name": name, "pools": {}, "wall_s": round(sim.wall_s, 2)}
    total = 0.0
    for p in cfg.pools:
        mine: list[Result] = [r for r in sim.results if r.pool == p.name]
        s = summarize(sc, mine, sim.timeline, 0.0, sim.end_s, p.name, {"started_at": 0.0})
        gs = sum(s["gpu_seconds"].values())
        total += gs
        ttft = [r.ttft for r in mine if r.ok and r.ttft is not None]
        out["pools"][p.name] = {
            "requests": len(mine), "slo_attainment": slo_attainment(mine, sc), "failed": sum(not r.ok for r in mine),
            "ttft_p95_s": quantile(ttft, 0.95), "gpu_seconds": gs,
            "overflowed": sum(1 for r in mine if r.served_by not in (None, p.name)),
            "reclaims_for": sum(1 for e in sim.events if e["kind"] == "reclaim" and e["pool"] == p.name),
        }
    out["gpu_seconds"] = total
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    ways = {
        "static partition 4/2/2 GPUs": fleet(static_partition()),
        "gpufleet, equal priorities": fleet(pools(False, False)),
        "gpufleet, priorities 100/50/0": fleet(pools(True, False)),
        "gpufleet, priorities + overflow": fleet(pools(True, True)),
    }
    rows = []
    for title, slots in (("staggered peaks (large, then small, then batch)", None),
                         ("overlapping peaks (small and batch in the same third)", {"batch": 1})):
        by_pool = arrivals(a.minutes, slots=slots)
        print(f"\n{title}; {a.minutes:g} min; requests: " + ", ".join(f"{k} {len(v)}" for k, v in by_pool.items())
              + "\n")
        print("| fleet | pool | requests | SLO attainment | failed | TTFT p95 | GPU-s | overflowed | reclaims |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, cfg in ways.items():
            r = run(name, cfg, by_pool, a.minutes) | {"scenario": title}
            rows.append(r)
            for pn, x in r["pools"].items():
                t = f"{x['ttft_p95_s']:.2f} s" if x["ttft_p95_s"] is not None else "-"
                print(f"| {name} | {pn} | {x['requests']} | {100 * x['slo_attainment']:.2f} % | {x['failed']} | {t} "
                      f"| {x['gpu_seconds']:,.0f} | {x['overflowed']} | {x['reclaims_for']} |", flush=True)
            print(f"| {name} | **host** | | | | | **{r['gpu_seconds']:,.0f}** | | |", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

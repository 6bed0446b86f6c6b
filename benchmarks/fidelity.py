"""How far the simulator is from the live stack on the same scenario and fleet.

    python -m benchmarks.fidelity REPORT_DIR --config FLEET [--scenario NAME]

REPORT_DIR is what `gpufleet scale-test` wrote against `gpufleet up --local --config FLEET`;
the scenario is replayed through `gpufleet simulate` with the same fleet (and the same seed,
so the same arrivals), and the two are compared: replica-seconds by role, TTFT and e2e
percentiles, inter-token latency, and the time of each scale event (n-th event of a kind
live vs the n-th simulated).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from autoscaler.config import load_config
from autoscaler.scaletest.report import quantile, summarize
from autoscaler.scaletest.scenario import arrivals, load_scenario
from autoscaler.sim.run import simulate

EVENT_KINDS = ("activate", "start", "ready", "drain", "stop", "demote")


def compare_runs(live: dict[str, Any], config: Path, scenario: str | None = None) -> dict[str, Any]:
    ls = live["summary"]
    sc, base = load_scenario(scenario or ls["scenario"])
    cfg = load_config(config)
    arr = arrivals(sc, base)
    sim = simulate(cfg, arr, duration_s=sc.duration_s)
    ss = summarize(sc, sim.results, sim.timeline, 0.0, sim.end_s, sim.pool, {"started_at": 0.0})
    sim_itl = [(r.e2e - r.ttft) / (r.tokens - 1) for r in sim.results
               if r.ok and r.ttft is not None and r.e2e is not None and r.tokens > 1]
    rows: list[tuple[str, float | None, float | None]] = []
    for role in ("active", "warm", "starting", "draining"):
        rows.append((f"replica-s {role}", ls["replica_seconds"][role], ss["replica_seconds"][role]))
    rows.append(("replica-s total", sum(ls["replica_seconds"].values()), sum(ss["replica_seconds"].values())))
    for name, key in (("TTFT p50 s", ("ttft_s", "p50")), ("TTFT p95 s", ("ttft_s", "p95")),
                      ("e2e p50 s", ("e2e_s", "p50")), ("e2e p95 s", ("e2e_s", "p95"))):
        rows.append((name, ls[key[0]][key[1]], ss[key[0]][key[1]]))
    rows.append(("inter-token p50 s", ls["itl_s"]["p50"], quantile(sim_itl, 0.5)))
    rows.append(("peak active", ls["peak_replicas"]["active"], ss["peak_replicas"]["active"]))
    live_ev = [e for e in live["events"] if e.get("pool") == ls["pool"]]
    events = []
    for kind in EVENT_KINDS:
        lt = [e["t"] for e in live_ev if e["kind"] == kind]
        st = [e["t"] for e in sim.events if e["kind"] == kind]
        for i in range(max(len(lt), len(st))):
            a = lt[i] if i < len(lt) else None
            b = st[i] if i < len(st) else None
            events.append({"kind": kind, "n": i + 1, "live_t": a, "sim_t": b,
                           "diff_s": None if a is None or b is None else round(b - a, 2)})
    return {"scenario": sc.name, "requests": {"live": ls["requests"], "sim": ss["requests"]},
            "failed": {"live": ls["failed"], "sim": ss["failed"]}, "rows": rows, "events": events}


def format_markdown(res: dict[str, Any]) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"

    out = [f"**{res['scenario']}** — requests live {res['requests']['live']} / sim {res['requests']['sim']}; "
           f"failed live {res['failed']['live']} / sim {res['failed']['sim']}", "",
           "| figure | live | simulated | sim − live | relative |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, a, b in res["rows"]:
        d = None if a is None or b is None else b - a
        rel = "-" if d is None or not a else f"{100 * d / a:+.0f} %"
        out.append(f"| {name} | {f(a)} | {f(b)} | {f(d)} | {rel} |")
    out += ["", "| scale event | live t (s) | simulated t (s) | sim − live (s) |", "| --- | ---: | ---: | ---: |"]
    for e in res["events"]:
        out.append(f"| {e['kind']} #{e['n']} | {f(e['live_t'])} | {f(e['sim_t'])} | {f(e['diff_s'])} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="a scale-test report folder (with report.json)")
    ap.add_argument("--config", type=Path, required=True, help="the fleet.yaml the live stack ran")
    ap.add_argument("--scenario", default=None, help="default: the report's scenario name")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    live = json.loads((args.report / "report.json").read_text())
    res = compare_runs(live, args.config, args.scenario)
    print(format_markdown(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

"""Warm activation latency and cold starts, read from a scale-test report.json.

    python -m benchmarks.activation reports/<run>/report.json

Activation latency, two ways: the scale-up decision that activated a warm
replica → nginx reloaded with it (the autoscaler's `routed` event), and → the
first token from that replica (the gateway's X-Gpufleet-Replica header; older
reports: its address; at low request rates this includes the wait for
the next request). Cold start: a replica's creation → ready, as the
autoscaler's `ready` event records it.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def activation_latencies(report: dict) -> list[dict[str, float | str]]:
    events = report["events"]
    upstream: dict[str, str] = {}
    for snap in report.get("replica_upstreams", []):
        upstream.update(snap)
    out = []
    for e in events:
        if e["kind"] != "activate":
            continue
        decision = max((d["t"] for d in events if d["kind"] == "decision" and d["t"] <= e["t"]), default=e["t"])
        addr = upstream.get(e["replica"])
        firsts = [r["sent"] + (r["ttft"] if r["ttft"] is not None else r["e2e"] or 0)
                  for r in report["requests"] if r["ok"] and (r.get("replica") == e["replica"]
                                                              or (addr and r.get("upstream") == addr))]
        after = [t for t in firsts if t >= decision]
        routed = [x["t"] for x in events if x["kind"] == "routed" and x.get("replica") == e["replica"]
                  and x["t"] >= e["t"]]
        out.append({"replica": e["replica"],
                    "decision_to_routed_s": (min(routed) - decision) if routed else None,
                    "decision_to_first_token_s": (min(after) - decision) if after else None})
    return out


def _median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> None:
    report = json.loads(Path(sys.argv[1]).read_text())
    acts = activation_latencies(report)
    colds = [e["load_s"] for e in report["events"] if e["kind"] == "ready" and "load_s" in e]
    print(json.dumps({
        "activations": acts,
        "routed_s_median": _median([a["decision_to_routed_s"] for a in acts]),
        "first_token_s_median": _median([a["decision_to_first_token_s"] for a in acts]),
        "cold_start_s": colds,
        "cold_start_s_median": statistics.median(colds) if colds else None,
    }, indent=1))


if __name__ == "__main__":
    main()

"""What a scale test reports: per-request figures, the fleet timeline, SLO verdicts, a PNG.

`summarize` is pure (results + timeline in, dict out) so the same numbers go to
the terminal, report.json and BENCHMARKS.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoscaler.runtime.base import ROLES
from autoscaler.scaletest.loadgen import Result
from autoscaler.scaletest.scenario import Scenario


def quantile(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def role_counts(status: dict[str, Any], pool: str | None) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(ROLES, 0)
    for name, p in status.get("pools", {}).items():
        if pool is not None and name != pool:
            continue
        for r in p["replicas"]:
            counts[r["role"]] = counts.get(r["role"], 0) + 1
    return counts


def replica_seconds(timeline: Sequence[tuple[float, dict[str, Any]]],
                    pool: str | None) -> dict[str, dict[str, float]]:
    """Integrate replicas (and GPUs) held by role over the run, step-wise between polls."""
    reps: dict[str, float] = dict.fromkeys(ROLES, 0.0)
    gpus: dict[str, float] = dict.fromkeys(ROLES, 0.0)
    for (t, st), (t2, _) in zip(timeline, timeline[1:], strict=False):
        dt = t2 - t
        for name, p in st.get("pools", {}).items():
            if pool is not None and name != pool:
                continue
            for r in p["replicas"]:
                reps[r["role"]] += dt
                gpus[r["role"]] += dt * len(r["gpus"])
    return {"replica_seconds": reps, "gpu_seconds": gpus}


def summarize(sc: Scenario, results: Sequence[Result], timeline: Sequence[tuple[float, dict[str, Any]]],
              t0: float, t_end: float, pool: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    e2e = [r.e2e for r in ok if r.e2e is not None]
    itl = [g for r in ok for g in r.gaps]
    n = len(results)
    dur = max(t_end - t0, 1e-9)
    success = len(ok) / n if n else 1.0
    events = [e for _, st in timeline for e in st.get("events", [])]
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for e in events:
        if e["t"] >= t0 and (pool is None or e.get("pool") == pool):
            seen[(e["t"], e["kind"], e.get("replica"))] = e
    evs = sorted(seen.values(), key=lambda e: e["t"])
    kinds: dict[str, int] = {}
    for e in evs:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    peak: dict[str, int] = dict.fromkeys(ROLES, 0)
    for _, st in timeline:
        for role, c in role_counts(st, pool).items():
            peak[role] = max(peak[role], c)
    slo = sc.slo
    p95_ttft, p95_e2e = quantile(ttft, 0.95), quantile(e2e, 0.95)
    verdicts: dict[str, dict[str, Any]] = {
        "success_rate": {"target": slo.success_rate, "value": success, "met": success >= slo.success_rate}}
    if slo.ttft_p95_s is not None:
        verdicts["ttft_p95_s"] = {"target": slo.ttft_p95_s, "value": p95_ttft,
                                  "met": p95_ttft is not None and p95_ttft <= slo.ttft_p95_s}
    if slo.e2e_p95_s is not None:
        verdicts["e2e_p95_s"] = {"target": slo.e2e_p95_s, "value": p95_e2e,
                                 "met": p95_e2e is not None and p95_e2e <= slo.e2e_p95_s}
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = (r.error or "?").split(":")[0][:60] if r.status == 0 else f"HTTP {r.status}"
            errors[key] = errors.get(key, 0) + 1
    return {
        "scenario": sc.name,
        "pool": pool,
        "duration_s": round(dur, 2),
        "requests": n,
        "succeeded": len(ok),
        "failed": n - len(ok),
        "retried_unsent": sum(r.retries for r in results),
        "errors": errors,
        "success_rate": success,
        "offered_rps": n / dur,
        "served_rps": len(ok) / dur,
        "ttft_s": {"p50": quantile(ttft, 0.5), "p95": p95_ttft, "p99": quantile(ttft, 0.99)},
        "e2e_s": {"p50": quantile(e2e, 0.5), "p95": p95_e2e, "p99": quantile(e2e, 0.99)},
        "itl_s": {"p50": quantile(itl, 0.5), "p95": quantile(itl, 0.95)},
        "tokens_generated": sum(r.tokens for r in ok),
        **replica_seconds(timeline, pool),
        "peak_replicas": peak,
        "events": kinds,
        "slo": verdicts,
        "slo_met": all(v["met"] for v in verdicts.values()),
        **(extra or {}),
    }


def format_summary(s: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f} ms"

    rs = s["replica_seconds"]
    lines = [
        f"scenario {s['scenario']}  pool {s['pool']}  {s['duration_s']:.0f} s",
        f"  requests   {s['requests']}  ok {s['succeeded']}  failed {s['failed']}  "
        f"(success {100 * s['success_rate']:.2f} %, retried unsent {s['retried_unsent']})",
        f"  rate       offered {s['offered_rps']:.2f} req/s  served {s['served_rps']:.2f} req/s",
        f"  TTFT       p50 {ms(s['ttft_s']['p50'])}  p95 {ms(s['ttft_s']['p95'])}  p99 {ms(s['ttft_s']['p99'])}",
        f"  end-to-end p50 {ms(s['e2e_s']['p50'])}  p95 {ms(s['e2e_s']['p95'])}  p99 {ms(s['e2e_s']['p99'])}",
        "  replica-s  " + "  ".join(f"{k} {v:.0f}" for k, v in rs.items()),
        "  peak       " + "  ".join(f"{k} {v}" for k, v in s["peak_replicas"].items()),
        "  events     " + ("  ".join(f"{k} {v}" for k, v in sorted(s["events"].items())) or "-"),
    ]
    for name, v in s["slo"].items():
        val = v["value"]
        shown = "-" if val is None else (f"{100 * val:.2f} %" if name == "success_rate" else f"{val:.3f} s")
        tgt = f"{100 * v['target']:.2f} %" if name == "success_rate" else f"{v['target']:.3f} s"
        lines.append(f"  SLO {name:<13} {'met ' if v['met'] else 'MISSED'}  {shown} (target {tgt})")
    return "\n".join(lines)


def plot_timeline(path: Path, results: Sequence[Result], timeline: Sequence[tuple[float, dict[str, Any]]],
                  t0: float, pool: str | None, title: str, bin_s: float = 1.0, ttft_bin_s: float = 5.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max([r.sent - t0 + (r.e2e or 0) for r in results] + [t - t0 for t, _ in timeline] + [1.0])
    nb = int(end / bin_s) + 1
    offered, served, errors = [0.0] * nb, [0.0] * nb, [0.0] * nb
    for r in results:
        offered[min(nb - 1, int((r.sent - t0) / bin_s))] += 1 / bin_s
        done = int((r.sent - t0 + (r.e2e or 0)) / bin_s)
        if r.ok:
            served[min(nb - 1, done)] += 1 / bin_s
        else:
            errors[min(nb - 1, done)] += 1
    xs = [i * bin_s for i in range(nb)]
    tl_t = [t - t0 for t, _ in timeline]
    roles = {role: [role_counts(st, pool)[role] for _, st in timeline] for role in ROLES}
    waiting = []
    for _, st in timeline:
        w = 0.0
        for name, p in st.get("pools", {}).items():
            if (pool is None or name == pool) and p.get("signals"):
                w += p["signals"]["waiting"]
        waiting.append(w)
    nt = int(end / ttft_bin_s) + 1
    buckets: list[list[float]] = [[] for _ in range(nt)]
    for r in results:
        if r.ok and r.ttft is not None:
            buckets[min(nt - 1, int((r.sent - t0) / ttft_bin_s))].append(r.ttft)
    tx = [(i + 0.5) * ttft_bin_s for i in range(nt) if buckets[i]]
    p50 = [quantile(b, 0.5) for b in buckets if b]
    p95 = [quantile(b, 0.95) for b in buckets if b]

    fig, ax = plt.subplots(5, 1, figsize=(11, 12), sharex=True, constrained_layout=True)
    ax[0].plot(xs, offered, label="offered", lw=1)
    ax[0].plot(xs, served, label="served (completed)", lw=1)
    ax[0].set_ylabel("req/s")
    ax[0].legend(loc="upper right")
    ax[0].set_title(title)
    colors = {"active": "tab:green", "warm": "tab:orange", "starting": "tab:blue", "draining": "tab:red"}
    ax[1].stackplot(tl_t, *(roles[r] for r in ("active", "warm", "starting", "draining")),
                    labels=["active", "warm", "starting", "draining"],
                    colors=[colors[r] for r in ("active", "warm", "starting", "draining")], step="post")
    ax[1].set_ylabel("replicas")
    ax[1].legend(loc="upper right", ncol=4)
    ax[2].plot(tl_t, waiting, color="tab:purple", lw=1)
    ax[2].set_ylabel("queue depth\n(waiting)")
    ax[3].plot(tx, p50, marker=".", label="TTFT p50")
    ax[3].plot(tx, p95, marker=".", label="TTFT p95")
    ax[3].set_ylabel(f"seconds\n({ttft_bin_s:g} s windows)")
    ax[3].legend(loc="upper right")
    ax[4].bar(xs, errors, width=bin_s, color="tab:red")
    ax[4].set_ylabel("errors")
    ax[4].set_xlabel("seconds since start")
    fig.savefig(path, dpi=90)
    plt.close(fig)

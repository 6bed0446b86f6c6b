"""`gpufleet simulate --compare`: gpufleet and the baselines on the same arrivals, side by side."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoscaler.config import FleetConfig, PoolConfig
from autoscaler.scaletest.loadgen import Arrival, Result
from autoscaler.scaletest.report import quantile, summarize
from autoscaler.scaletest.scenario import Scenario, Trace
from autoscaler.sim.baselines import BASELINES, Baseline, static
from autoscaler.sim.run import SimResult, pool_profile, simulate


def clairvoyant_gpu_seconds(arrivals: Sequence[Arrival], pool: PoolConfig, slo_e2e_s: float | None,
                            end_s: float) -> tuple[float, dict[str, Any]]:
    """A fluid lower-bound estimate of the GPU time any autoscaler needs, knowing every arrival.

    Exactly: each request costs a replica prompt × prefill_per_token + output × step(B) / B seconds,
    where B is the largest batch the engine can run (slots, and KV capacity at the mean request
    size) — the cheapest a token ever gets. Time is cut into bins of max(10 s, the e2e SLO); a bin
    needs ceil(work arriving in it / bin length) replicas, at least min_replicas, at most
    max_replicas; every replica added between bins is paid a full cold start (startup + load)
    before it serves. GPU-seconds = replica-seconds × GPUs per replica. Queueing, batching
    inefficiency and the gateway are ignored, so no real schedule does better; it is not exact
    either (work may slip across a bin edge within the SLO), so read it as the floor's estimate.
    """
    prof = pool_profile(pool)
    if not arrivals:
        return 0.0, {}
    mean_kv = sum(a.prompt_tokens + a.max_tokens for a in arrivals) / len(arrivals)
    batch = max(1, min(prof.max_num_seqs, int(prof.kv_capacity_tokens // max(mean_kv, 1))))
    per_token = (prof.step_base_s + prof.step_per_seq_s * batch) / batch
    bin_s = max(10.0, slo_e2e_s or 0.0)
    nbins = int(end_s // bin_s) + 1
    work = [0.0] * nbins
    for a in arrivals:
        cost = a.prompt_tokens * prof.prefill_per_token_s + a.max_tokens * per_token
        work[min(nbins - 1, int(a.at // bin_s))] += cost
    need = [min(max(pool.min_replicas, math.ceil(w / bin_s)), pool.max_replicas) for w in work]
    cold = prof.startup_s + prof.load_time_s
    replica_s = sum(n * bin_s for n in need)
    replica_s += sum(max(0, b - a) * cold for a, b in zip([pool.min_replicas, *need], need, strict=False))
    gpus = max(pool.gpus_per_replica, 1)
    return replica_s * gpus, {"batch": batch, "bin_s": bin_s, "peak_replicas": max(need),
                              "mean_replicas": sum(need) / len(need)}


def slo_attainment(results: Sequence[Result], sc: Scenario) -> float:
    """Share of requests served within the TTFT and e2e SLO (a failed request is a miss)."""
    if not results:
        return 1.0
    ok = 0
    for r in results:
        if not r.ok:
            continue
        if sc.slo.ttft_p95_s is not None and r.ttft is not None and r.ttft > sc.slo.ttft_p95_s:
            continue
        if sc.slo.e2e_p95_s is not None and r.e2e is not None and r.e2e > sc.slo.e2e_p95_s:
            continue
        ok += 1
    return ok / len(results)


def _row(name: str, title: str, sim: SimResult, sc: Scenario, pool: PoolConfig) -> dict[str, Any]:
    s = summarize(sc, sim.results, sim.timeline, 0.0, sim.end_s, sim.pool, {"started_at": 0.0})
    by_role = s["gpu_seconds"] if pool.gpus_per_replica > 0 else s["replica_seconds"]
    ttft = [r.ttft for r in sim.results if r.ok and r.ttft is not None]
    return {
        "name": name, "title": title,
        "slo_attainment": slo_attainment(sim.results, sc),
        "slo_met": s["slo_met"],
        "requests": s["requests"],
        "failed": s["failed"],
        "ttft_p50_s": quantile(ttft, 0.5), "ttft_p95_s": quantile(ttft, 0.95), "ttft_p99_s": quantile(ttft, 0.99),
        "e2e_p95_s": s["e2e_s"]["p95"],
        "gpu_seconds": sum(by_role.values()),
        "gpu_seconds_by_role": {k: round(v, 1) for k, v in by_role.items()},
        "peak_replicas": max((sum(len(q["replicas"]) for q in st["pools"].values()) for _, st in sim.timeline),
                             default=0),
        "sim_wall_s": round(sim.wall_s, 3),
        "_sim": sim,
    }


def run_baseline(b: Baseline, cfg: FleetConfig, arr: Sequence[Arrival], pool: str | None,
                 duration_s: float) -> SimResult:
    return simulate(b.fleet(cfg), arr, pool=pool, name=b.name, policy=b.policy, initial_state=b.initial_state,
                    duration_s=duration_s)


def compare(cfg: FleetConfig, sc: Scenario, arr: Sequence[Arrival], *, pool: str | None = None,
            baselines: Sequence[str] = tuple(BASELINES)) -> dict[str, Any]:
    wall0 = time.perf_counter()
    p = cfg.pool(pool) if pool else cfg.pools[0]
    rows = [_row("gpufleet", "gpufleet (as configured)", simulate(cfg, arr, pool=pool, duration_s=sc.duration_s),
                 sc, p)]
    # static peak: the fewest always-on replicas whose run meets the scenario's SLO
    found = None
    for n in range(max(p.min_replicas, 1), p.max_replicas + 1):
        b = static(n)
        row = _row(f"static-peak ({n})", f"static peak: {n} always-on replicas",
                   run_baseline(b, cfg, arr, pool, sc.duration_s), sc, p)
        found = row
        if row["slo_met"]:
            break
    if found is not None:
        if not found["slo_met"]:
            found["title"] += " (even max_replicas misses the SLO)"
        rows.append(found)
    for name in baselines:
        b = BASELINES[name]()
        rows.append(_row(b.name, b.title, run_baseline(b, cfg, arr, pool, sc.duration_s), sc, p))
    end = max([sc.duration_s] + [a.at for a in arr])
    floor, detail = clairvoyant_gpu_seconds(arr, p, sc.slo.e2e_p95_s, end)
    for r in rows:
        r["vs_clairvoyant"] = r["gpu_seconds"] / floor if floor > 0 else None
    trace: dict[str, Any] = {"scenario": sc.name, "requests": len(arr), "duration_s": sc.duration_s,
                             "slo": sc.slo.model_dump()}
    if isinstance(sc.profile, Trace):
        trace.update(path=str(sc.profile.path), time_compression=sc.profile.time_compression,
                     rate_scale=sc.profile.rate_scale, max_prompt_tokens=sc.max_prompt_tokens,
                     max_output_tokens=sc.max_output_tokens)
    return {"runs": rows, "clairvoyant_gpu_seconds": floor, "clairvoyant": detail, "trace": trace,
            "pool": p.name, "gpus_per_replica": p.gpus_per_replica, "wall_s": time.perf_counter() - wall0}


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The comparison as JSON (without the raw simulation runs)."""
    return {**result, "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in result["runs"]]}


def format_table(result: dict[str, Any]) -> str:
    unit = "GPU-s" if result["gpus_per_replica"] > 0 else "slot-s"

    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    head = (f"{'run':<22} {'SLO att.':>8} {'failed':>6} {'TTFT p50':>8} {'p95':>7} {'p99':>7} {'e2e p95':>7} "
            f"{unit:>9} {'active':>8} {'warm':>7} {'start':>7} {'drain':>6} {'÷clairv.':>8}")
    lines = [head, "-" * len(head)]
    for r in result["runs"]:
        role = r["gpu_seconds_by_role"]
        vs = r["vs_clairvoyant"]
        lines.append(
            f"{r['name']:<22} {100 * r['slo_attainment']:7.2f}% {r['failed']:>6} {s(r['ttft_p50_s']):>8} "
            f"{s(r['ttft_p95_s']):>7} {s(r['ttft_p99_s']):>7} {s(r['e2e_p95_s']):>7} {r['gpu_seconds']:>9.0f} "
            f"{role['active']:>8.0f} {role['warm']:>7.0f} {role['starting']:>7.0f} {role['draining']:>6.0f} "
            f"{'-' if vs is None else f'{vs:.2f}':>8}")
    lines.append(f"{'clairvoyant (bound)':<22} {'':>8} {'':>6} {'':>8} {'':>7} {'':>7} {'':>7} "
                 f"{result['clairvoyant_gpu_seconds']:>9.0f}")
    t = result["trace"]
    lines.append(f"{t['requests']} requests, {t['duration_s']:.0f} s; SLO per request: TTFT ≤ "
                 f"{t['slo']['ttft_p95_s']} s, e2e ≤ {t['slo']['e2e_p95_s']} s; simulated in {result['wall_s']:.1f} s")
    return "\n".join(lines)


def format_markdown(result: dict[str, Any]) -> str:
    unit = "GPU-s" if result["gpus_per_replica"] > 0 else "slot-s"

    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    out = [f"| run | SLO attainment | failed | TTFT p50 / p95 / p99 (s) | e2e p95 (s) | {unit} "
           "(active / warm / starting / draining) | peak replicas | ÷ clairvoyant |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["runs"]:
        role = r["gpu_seconds_by_role"]
        vs = r["vs_clairvoyant"]
        out.append(f"| {r['name']} | {100 * r['slo_attainment']:.2f} % | {r['failed']} | {s(r['ttft_p50_s'])} / "
                   f"{s(r['ttft_p95_s'])} / {s(r['ttft_p99_s'])} | {s(r['e2e_p95_s'])} | **{r['gpu_seconds']:.0f}** "
                   f"({role['active']:.0f} / {role['warm']:.0f} / {role['starting']:.0f} / {role['draining']:.0f}) "
                   f"| {r['peak_replicas']} | {'-' if vs is None else f'{vs:.2f}'} |")
    out.append(f"| clairvoyant (bound) | | | | | **{result['clairvoyant_gpu_seconds']:.0f}** | "
               f"{result['clairvoyant'].get('peak_replicas', '-')} | 1.00 |")
    return "\n".join(out)


def plot_compare(path: Path, result: dict[str, Any], arr: Sequence[Arrival], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 1, figsize=(11, 7), sharex=True, constrained_layout=True)
    end = max([a.at for a in arr] + [1.0])
    nb = int(end // 10) + 1
    rate = [0.0] * nb
    for a in arr:
        rate[int(a.at // 10)] += 0.1
    ax[0].plot([i * 10 for i in range(nb)], rate, lw=1, color="black")
    ax[0].set_ylabel("offered req/s\n(10 s bins)")
    ax[0].set_title(title)
    for r in result["runs"]:
        sim: SimResult = r["_sim"]
        xs = [t for t, _ in sim.timeline]
        ys = [sum(len(p["replicas"]) for p in st["pools"].values() if p is not None) for _, st in sim.timeline]
        ax[1].step(xs, ys, where="post", lw=1, label=f"{r['name']} ({r['gpu_seconds']:.0f})")
    ax[1].set_ylabel("replicas held\n(any role)")
    ax[1].set_xlabel("seconds")
    ax[1].legend(loc="upper left", fontsize=8, ncol=2)
    fig.savefig(path, dpi=90)
    plt.close(fig)

"""`gpufleet simulate --compare`: every system at the cheapest setting of its own knob that meets the
scenario's SLO, over several phases of the same arrivals, beside a lower bound from the work alone.

A system's knob is what its user would turn to trade GPUs for latency: the per-replica target it scales
on (gpufleet, HPA, Knative, AIBrix: the concurrency per replica; KEDA: the waiting requests per replica
of its trigger) or, for a fleet without an autoscaler, the replica count. Each setting runs on every
phase — the arrivals shifted by k × PHASE_STEP_S, so that each system's sync period, scrape and tick
meet the traffic at other offsets — and meets the SLO only if it does on every phase. The search walks
the settings cheapest first by bisection (a setting that meets it makes every more generous one meet it
too), and keeps, of those that met it, the one with the fewest mean GPU-seconds.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autoscaler.config import FleetConfig, PoolConfig, Targets
from autoscaler.scaletest.loadgen import Arrival, Result
from autoscaler.scaletest.report import quantile, summarize
from autoscaler.scaletest.scenario import Scenario, Trace
from autoscaler.sim.baselines import Baseline, aibrix_apa, hpa, keda, knative_kpa, static
from autoscaler.sim.run import pool_profile, simulate

PHASE_STEP_S = 6.2  # 5 phases: 0, 6.2 … 24.8 s, across a 30 s scrape, a 15 s sync, a 10 s resync, a 2 s tick
# the target settings tried: the pool's own target × these, cheapest (the most per replica) first
FACTORS = tuple(round(2 ** (2 - i / 4), 3) for i in range(21))  # 4.0, 3.364 … 0.125
KEDA_THRESHOLD = 5.0  # production-stack's waiting-requests threshold, the KEDA knob's reference


@dataclass(frozen=True)
class System:
    """A system and its knob: `settings` cheapest first; `build(setting)` → (the fleet it runs on, its policy
    or None for gpufleet's own)."""

    name: str
    title: str
    knob: str
    settings: tuple[float, ...]
    searched: bool
    build: Callable[[float], tuple[Callable[[FleetConfig], FleetConfig], Baseline | None]]


def _scaled_targets(t: Targets, f: float) -> Targets:
    """Every set target × f (a usage share stays ≤ 1)."""
    return t.model_copy(update={n: min(v * f, 1.0) if n == "kv_cache_usage" else v * f for n, v in t.items()})


def _with_pool(pool: str, fn: Callable[[PoolConfig], PoolConfig]) -> Callable[[FleetConfig], FleetConfig]:
    def edit(cfg: FleetConfig) -> FleetConfig:
        return cfg.model_copy(update={"pools": tuple(fn(p) if p.name == pool else p for p in cfg.pools)})

    return edit


def _same(cfg: FleetConfig) -> FleetConfig:
    return cfg


def systems(pool: PoolConfig) -> list[System]:
    """gpufleet as configured and tuned, oracle static, and the peers, each with its knob's settings."""
    name = pool.name
    base = pool.targets.concurrency or float(pool_profile(pool).max_num_seqs)
    main_target = pool.targets.items()[0][0]

    def gpufleet(f: float) -> tuple[Callable[[FleetConfig], FleetConfig], Baseline | None]:
        return _with_pool(name, lambda p: p.model_copy(update={"targets": _scaled_targets(p.targets, f)})), None

    return [
        System("gpufleet", "gpufleet (as configured)", f"{main_target} per replica", (1.0,), False, gpufleet),
        System("gpufleet-tuned", "gpufleet (its targets searched)", f"{main_target} per replica", FACTORS, True,
               gpufleet),
        System("oracle-static", "static, the fewest always-on replicas (chosen knowing the trace)", "replicas",
               tuple(float(n) for n in range(max(pool.min_replicas, 1), pool.max_replicas + 1)), True,
               lambda n: (_same, static(int(n)))),
        System("hpa", hpa().title, f"{main_target} per replica", FACTORS, True,
               lambda f: (gpufleet(f)[0], hpa())),
        System("keda", keda().title, "waiting requests per replica", FACTORS, True,
               lambda f: (_same, keda(threshold=KEDA_THRESHOLD * f))),
        System("knative", "Knative KPA (defaults; target = concurrency × 1.0)", "concurrency per replica", FACTORS,
               True, lambda f: (_same, knative_kpa(target_utilization=1.0, container_concurrency=base * f))),
        System("aibrix", aibrix_apa().title, "concurrency per replica", FACTORS, True,
               lambda f: (_same, aibrix_apa(target=base * f))),
    ]


def setting_label(s: System, pool: PoolConfig, v: float) -> str:
    if s.name == "oracle-static":
        return f"{int(v)} replicas"
    if s.name == "keda":
        return f"threshold {KEDA_THRESHOLD * v:.3g}"
    if s.name in ("knative", "aibrix"):
        base = pool.targets.concurrency or float(pool_profile(pool).max_num_seqs)
        return f"concurrency {base * v:.3g}"
    return ", ".join(f"{n} {x * v:.3g}" for n, x in pool.targets.items())


# ---- one run: (system, setting, phase) ------------------------------------------------------------

_SHARED: dict[str, Any] = {}  # the comparison's inputs, inherited by forked workers (not pickled per run)


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


def _run(system: str, setting: float, phase_s: float) -> dict[str, Any]:
    cfg: FleetConfig = _SHARED["cfg"]
    sc: Scenario = _SHARED["sc"]
    pool: PoolConfig = _SHARED["pool"]
    sys_ = next(s for s in systems(pool) if s.name == system)
    edit, b = sys_.build(setting)
    arr = [replace(a, at=a.at + phase_s) for a in _SHARED["arr"]]
    fleet = edit(b.fleet(cfg) if b else cfg)
    if b is None:
        sim = simulate(fleet, arr, pool=pool.name, name=system, duration_s=sc.duration_s + phase_s)
    else:
        sim = simulate(fleet, arr, pool=pool.name, name=system, duration_s=sc.duration_s + phase_s,
                       policy=b.policy, initial_state=b.initial_state)
    s = summarize(sc, sim.results, sim.timeline, 0.0, sim.end_s, sim.pool, {"started_at": 0.0})
    by_role = s["gpu_seconds"] if pool.gpus_per_replica > 0 else s["replica_seconds"]
    ttft = [r.ttft for r in sim.results if r.ok and r.ttft is not None]
    held = [(t, sum(len(q["replicas"]) for q in st["pools"].values() if q is not None)) for t, st in sim.timeline]
    return {
        "phase_s": phase_s, "slo_met": s["slo_met"], "slo_attainment": slo_attainment(sim.results, sc),
        "requests": s["requests"], "failed": s["failed"], "gpu_seconds": sum(by_role.values()),
        "gpu_seconds_by_role": by_role, "ttft_p95_s": quantile(ttft, 0.95), "e2e_p95_s": s["e2e_s"]["p95"],
        "peak_replicas": max((n for _, n in held), default=0), "sim_wall_s": sim.wall_s,
        "held": [(t, n) for i, (t, n) in enumerate(held) if i == 0 or n != held[i - 1][1]] if phase_s == 0 else [],
    }


def _trial(ex: Executor | None, system: str, setting: float, phases: Sequence[float]) -> dict[str, Any]:
    """One setting on every phase: met only if met on each; the figures are means, with the GPU-s spread."""
    runs = [_run(system, setting, p) for p in phases] if ex is None else list(
        ex.map(_run, [system] * len(phases), [setting] * len(phases), phases))
    n = len(runs)
    gpu = [r["gpu_seconds"] for r in runs]

    def mean(k: str) -> float | None:
        xs = [r[k] for r in runs if r[k] is not None]
        return sum(xs) / len(xs) if xs else None

    roles = {k: sum(r["gpu_seconds_by_role"][k] for r in runs) / n for k in runs[0]["gpu_seconds_by_role"]}
    return {
        "setting_value": setting, "slo_met": all(r["slo_met"] for r in runs),
        "slo_attainment": sum(r["slo_attainment"] for r in runs) / n,
        "slo_attainment_min": min(r["slo_attainment"] for r in runs),
        "gpu_seconds": sum(gpu) / n, "gpu_seconds_min": min(gpu), "gpu_seconds_max": max(gpu),
        "gpu_seconds_by_role": roles, "ttft_p95_s": mean("ttft_p95_s"), "e2e_p95_s": mean("e2e_p95_s"),
        "failed": sum(r["failed"] for r in runs), "requests": runs[0]["requests"],
        "peak_replicas": max(r["peak_replicas"] for r in runs), "sim_wall_s": sum(r["sim_wall_s"] for r in runs),
        "held": next((r["held"] for r in runs if r["held"]), []),
    }


def search(ex: Executor | None, s: System, phases: Sequence[float],
           progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The cheapest setting of `s` that meets the SLO on every phase, and every trial made to find it.
    Bisection over the settings (cheapest first) for the first that meets it; if the most generous setting
    does not, that trial comes back with slo_met False (the system cannot meet the SLO within its range)."""
    tried: dict[int, dict[str, Any]] = {}

    def meets(i: int) -> bool:
        if i not in tried:
            tried[i] = _trial(ex, s.name, s.settings[i], phases)
            if progress:
                progress(f"{s.name} {s.settings[i]:g}: {'met' if tried[i]['slo_met'] else 'missed'}")
        return bool(tried[i]["slo_met"])

    lo, hi = 0, len(s.settings) - 1
    if not s.searched or not meets(hi):
        meets(hi)
        return tried[hi], [tried[i] for i in sorted(tried)]
    while lo < hi:
        mid = (lo + hi) // 2
        if meets(mid):
            hi = mid
        else:
            lo = mid + 1
    best = min((t for t in tried.values() if t["slo_met"]), key=lambda t: t["gpu_seconds"])
    return best, [tried[i] for i in sorted(tried)]


def lower_bound_gpu_seconds(arrivals: Sequence[Arrival], pool: PoolConfig,
                            end_s: float) -> tuple[float, dict[str, Any]]:
    """A true lower bound: the replica time the work alone needs, at the best batching there is, and no
    less than min_replicas held for the whole run; × GPUs per replica.

    Each request costs a replica prompt × prefill_per_token + output × step(B) / B seconds, B the engine's
    largest batch (its slot count, KV capacity ignored): no batch makes a token cheaper, and no schedule
    serves a request with less replica time. No rounding to whole replicas, no cold starts, no queueing:
    every real schedule spends at least this; the gap to it is what autoscaling, batching and the SLO cost.
    """
    prof = pool_profile(pool)
    b = max(prof.max_num_seqs, 1)
    per_token = prof.step_base_s / b + prof.step_per_seq_s
    work = sum(a.prompt_tokens * prof.prefill_per_token_s + a.max_tokens * per_token for a in arrivals)
    floor = pool.min_replicas * end_s
    gpus = max(pool.gpus_per_replica, 1)
    return max(work, floor) * gpus, {"work_replica_s": round(work, 1), "min_replicas_s": round(floor, 1),
                                     "batch": b}


def compare(cfg: FleetConfig, sc: Scenario, arr: Sequence[Arrival], *, pool: str | None = None, phases: int = 5,
            workers: int | None = None, only: Sequence[str] | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    wall0 = time.perf_counter()
    p = cfg.pool(pool) if pool else cfg.pools[0]
    shifts = [round(k * PHASE_STEP_S, 3) for k in range(max(phases, 1))]
    _SHARED.update(cfg=cfg, sc=sc, arr=list(arr), pool=p)
    workers = workers if workers is not None else min(os.cpu_count() or 1, len(shifts))
    ex: Executor | None = None
    if workers > 1:
        ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    rows = []
    try:
        for s in systems(p):
            if only is not None and s.name not in only:
                continue
            best, tried = search(ex, s, shifts, progress)
            title = s.title if best["slo_met"] else f"{s.title} — cannot meet the SLO within its range"
            if s.searched and best["slo_met"] and best["setting_value"] == s.settings[0]:
                title += " — its cheapest setting tried met the SLO: a cheaper one may too"
            rows.append({
                "name": s.name, "title": title, "knob": s.knob, "setting": setting_label(s, p, best["setting_value"]),
                **{k: v for k, v in best.items() if k != "held"}, "seeds": len(shifts), "phases_s": shifts,
                "tried": [{"setting": setting_label(s, p, t["setting_value"]), "slo_met": t["slo_met"],
                           "slo_attainment": round(t["slo_attainment"], 5), "gpu_seconds": round(t["gpu_seconds"], 1)}
                          for t in tried],
                "_held": best["held"],
            })
    finally:
        if ex is not None:
            ex.shutdown()
        _SHARED.clear()
    end = max([sc.duration_s] + [a.at for a in arr])
    bound, detail = lower_bound_gpu_seconds(arr, p, end)
    for r in rows:
        r["vs_lower_bound"] = r["gpu_seconds"] / bound if bound > 0 else None
    trace: dict[str, Any] = {"scenario": sc.name, "requests": len(arr), "duration_s": sc.duration_s,
                             "slo": sc.slo.model_dump()}
    if isinstance(sc.profile, Trace):
        trace.update(path=str(sc.profile.path), time_compression=sc.profile.time_compression,
                     rate_scale=sc.profile.rate_scale, max_prompt_tokens=sc.max_prompt_tokens,
                     max_output_tokens=sc.max_output_tokens)
    return {"runs": rows, "lower_bound_gpu_seconds": bound, "lower_bound": detail, "trace": trace,
            "pool": p.name, "gpus_per_replica": p.gpus_per_replica, "phases_s": shifts,
            "wall_s": time.perf_counter() - wall0}


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The comparison as JSON (without the replica series kept for the plot)."""
    return {**result, "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in result["runs"]]}


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_table(result: dict[str, Any]) -> str:
    unit = "GPU-s" if result["gpus_per_replica"] > 0 else "slot-s"
    head = (f"{'system':<15} {'setting':<24} {'SLO':>4} {'attain.':>8} {unit + ' mean':>11} {'min–max':>15} "
            f"{'÷bound':>7} {'TTFT p95':>8} {'e2e p95':>7} {'tried':>5}")
    lines = [head, "-" * len(head)]
    for r in result["runs"]:
        vs = r["vs_lower_bound"]
        lines.append(
            f"{r['name']:<15} {r['setting'][:24]:<24} {'met' if r['slo_met'] else 'MISS':>4} "
            f"{100 * r['slo_attainment']:7.2f}% {r['gpu_seconds']:>11.0f} "
            f"{r['gpu_seconds_min']:>7.0f}–{r['gpu_seconds_max']:<7.0f} {'-' if vs is None else f'{vs:.2f}':>7} "
            f"{_f(r['ttft_p95_s']):>8} {_f(r['e2e_p95_s']):>7} {len(r['tried']):>5}")
    bound = result["lower_bound_gpu_seconds"]
    lines.append(f"{'lower bound':<15} {'(the work alone)':<24} {'':>4} {'':>8} {bound:>11.0f}")
    t = result["trace"]
    lines.append(f"{t['requests']} requests, {t['duration_s']:.0f} s; SLO: TTFT p95 ≤ {t['slo']['ttft_p95_s']} s, "
                 f"e2e p95 ≤ {t['slo']['e2e_p95_s']} s, success ≥ {t['slo']['success_rate']}, on each of "
                 f"{len(result['phases_s'])} phases {result['phases_s']} s; compared in {result['wall_s']:.1f} s")
    return "\n".join(lines)


def format_markdown(result: dict[str, Any]) -> str:
    unit = "GPU-s" if result["gpus_per_replica"] > 0 else "slot-s"
    out = [f"| system | cheapest setting meeting the SLO | SLO met | attainment (mean) | {unit} mean (min–max) | "
           "÷ lower bound | TTFT p95 (s) | e2e p95 (s) | settings tried |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["runs"]:
        vs = r["vs_lower_bound"]
        out.append(f"| {r['name']} | {r['setting']} | {'yes' if r['slo_met'] else '**no**'} | "
                   f"{100 * r['slo_attainment']:.2f} % | **{r['gpu_seconds']:.0f}** ({r['gpu_seconds_min']:.0f}–"
                   f"{r['gpu_seconds_max']:.0f}) | {'-' if vs is None else f'{vs:.2f}'} | {_f(r['ttft_p95_s'])} | "
                   f"{_f(r['e2e_p95_s'])} | {len(r['tried'])} |")
    out.append(f"| lower bound (the work alone) | | | | **{result['lower_bound_gpu_seconds']:.0f}** | 1.00 | | | |")
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
        held = r["_held"]
        if held:
            ax[1].step([t for t, _ in held], [n for _, n in held], where="post", lw=1,
                       label=f"{r['name']}, {r['setting']} ({r['gpu_seconds']:.0f})")
    ax[1].set_ylabel("replicas held, phase 0\n(any role)")
    ax[1].set_xlabel("seconds")
    ax[1].legend(loc="upper left", fontsize=8, ncol=2)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_count(result: dict[str, Any]) -> int:
    """How many simulations the comparison ran (settings tried × phases)."""
    return sum(len(r["tried"]) for r in result["runs"]) * len(result["phases_s"])


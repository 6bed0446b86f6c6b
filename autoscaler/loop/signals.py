"""Replica metrics → per-pool signals. Parsing and aggregation are pure; the
scrape itself is a thin httpx call in the controller.

Which metric stands behind which signal is the engine's (`autoscaler.engines`:
vLLM's names, SGLang's, TGI's, llama.cpp's, or a pool's own), so that a pool of
any of those servers is scaled on what that server exports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from autoscaler.engines import VLLM_METRICS, MetricNames

_SIM_GPU_MEM = "gpufleet_sim_gpu_memory_bytes"  # the sim engine's: what its virtual slot "holds"


@dataclass(frozen=True)
class ReplicaSample:
    t: float
    running: float
    waiting: float
    kv_usage: float
    ttft_buckets: tuple[tuple[float, float], ...]  # cumulative (le, count), ascending le
    requests_total: float
    sim_gpu_memory_bytes: float = 0.0


def parse_metrics(text: str, t: float, names: MetricNames = VLLM_METRICS) -> ReplicaSample:
    """One scrape → one sample, reading the samples `names` puts behind each signal. Anything the signals
    cannot use honestly (NaN, ±Inf, a bucket without a numeric `le`, text the parser refuses) is a
    ValueError: the replica's scrape failed, and only that replica's health pays for it."""
    running = waiting = kv = requests = sim_mem = 0.0
    buckets: dict[float, float] = {}
    bucket_names = {f"{h}_bucket" for h in names.ttft_histogram}
    sums = {f"{h}_sum" for h in names.ttft_histogram}
    gauges = set(names.running) | set(names.waiting) | set(names.kv_cache_usage) | set(names.requests_total)
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser raises more than ValueError on garbage
        raise ValueError(f"unparsable metrics: {type(e).__name__}: {e}") from None
    for fam in families:
        for s in fam.samples:
            n = s.name
            if (n in gauges or n in bucket_names) and not math.isfinite(s.value):
                raise ValueError(f"{n} is {s.value}: not a finite number")
            if n in names.running:
                running += s.value
            elif n in names.waiting:
                waiting += s.value
            elif n in names.kv_cache_usage:
                kv = max(kv, s.value)
            elif n in bucket_names:
                try:
                    le = float(s.labels["le"])
                except (KeyError, ValueError):
                    raise ValueError(f"{n} sample without a numeric le label: {s.labels}") from None
                if math.isnan(le):
                    raise ValueError(f"{n} has le=NaN")
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif n in names.requests_total:
                requests += s.value
            elif n == _SIM_GPU_MEM and math.isfinite(s.value):
                sim_mem += s.value
            elif n in sums:
                continue  # a histogram's sum may be anything
    if running < 0 or waiting < 0:
        raise ValueError(f"negative request counts (running {running}, waiting {waiting})")
    return ReplicaSample(t, running, waiting, kv, tuple(sorted(buckets.items())), requests, sim_mem)


@dataclass(frozen=True)
class PoolSignals:
    """What the policy sees of one pool at one tick (totals over routed, ready replicas)."""

    t: float
    ready: int
    running: float
    waiting: float
    kv_usage: float  # mean over ready replicas
    ttft_p95_s: float | None  # over the window; None without enough requests
    request_rate: float | None  # requests/s finished, whole pool
    held: int = 0  # requests the activator holds for this pool (it has no serving replica)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile on cumulative buckets (linear within a bucket)."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def _delta_buckets(
    new: tuple[tuple[float, float], ...], old: tuple[tuple[float, float], ...] | None
) -> list[tuple[float, float]]:
    base = dict(old or ())
    # A counter that went down means the replica restarted: count from zero.
    return [(le, c - base.get(le, 0.0) if c >= base.get(le, 0.0) else c) for le, c in new]


def pool_signals(
    t: float, series: Sequence[Sequence[ReplicaSample]], window_s: float, held: int = 0
) -> PoolSignals:
    """Aggregate per-replica sample histories (oldest first) of the pool's routed, ready replicas."""
    latest = [s[-1] for s in series if s]
    n = len(latest)
    running = sum(s.running for s in latest)
    waiting = sum(s.waiting for s in latest)
    kv = sum(s.kv_usage for s in latest) / n if n else 0.0
    merged: dict[float, float] = {}
    finished = 0.0
    span = 0.0
    for hist in series:
        if not hist:
            continue
        new = hist[-1]
        old = next((s for s in hist if s.t >= t - window_s), hist[0])
        if old is new and len(hist) == 1:
            continue
        for le, c in _delta_buckets(new.ttft_buckets, old.ttft_buckets):
            merged[le] = merged.get(le, 0.0) + c
        d = new.requests_total - old.requests_total
        finished += d if d >= 0 else new.requests_total
        span = max(span, new.t - old.t)
    ttft = histogram_quantile(0.95, sorted(merged.items())) if merged else None
    rate = finished / span if span > 0 else None
    return PoolSignals(t, n, running, waiting, kv, ttft, rate, held)

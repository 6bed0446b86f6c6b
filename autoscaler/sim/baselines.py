"""What users run instead of gpufleet, as policies that plug into the same `reconcile`.

Each emulation is written from the peer's documented algorithm and defaults
(the source is in its docstring) and runs on exactly the replica model,
lifecycle and gateway that gpufleet runs on in the simulator. What differs is
only the decision: its signal, its period, its windows and limits, and that
none of them keeps warm replicas (a scale-up is a cold start). A scale-down is
the same drain for all (Kubernetes removes the pod from the endpoints and lets
in-flight requests finish within the grace period).

A policy has gpufleet's signature, `(pool, signals, view, state, now) -> Decision`;
`signals` is the pool's per-tick history (1 s apart), `view` the replicas by role.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from autoscaler.config import Behavior, FleetConfig, PoolConfig, RatePolicy, ScaleRules, Targets, WarmPool
from autoscaler.loop.policy import Decision, PolicyState, PoolView, decide
from autoscaler.loop.signals import PoolSignals

# Kubernetes HPA defaults (k8s.io/kubernetes pkg/controller/podautoscaler; HPA docs, "Default Behavior"):
# sync period 15 s, tolerance 0.1, scale-up: stabilization 0 s, max(+100 %, +4 pods) per 15 s;
# scale-down: stabilization 300 s, 100 % per 15 s.
HPA_BEHAVIOR = Behavior(
    tolerance=0.1,
    metric_window_s=1.0,
    scale_up=ScaleRules(stabilization_s=0, policies=(RatePolicy(type="percent", value=100, period_s=15),
                                                     RatePolicy(type="replicas", value=4, period_s=15))),
    scale_down=ScaleRules(stabilization_s=300, policies=(RatePolicy(type="percent", value=100, period_s=15),)),
    panic_threshold=1e9,  # HPA has no panic mode
    panic_hold_s=0,
)


@dataclass(frozen=True)
class _Periodic:
    last_eval: float
    decision: Decision[Any] | None
    inner: Any


def periodic(inner: Callable[..., Decision[Any]], period_s: float) -> Callable[..., Decision[Any]]:
    """Evaluate `inner` only every `period_s` (a sync period); between, the last decision stands."""

    def policy(pool: PoolConfig, signals: Sequence[PoolSignals], view: PoolView, state: _Periodic,
               now: float) -> Decision[_Periodic]:
        if state.decision is not None and now - state.last_eval < period_s - 1e-9:
            d = state.decision
            return replace(d, state=state)
        d = inner(pool, signals, view, state.inner, now)
        return replace(d, desired_warm=0, state=_Periodic(now, d, d.state))

    return policy


def _no_warm(pool: PoolConfig, behavior: Behavior, targets: Targets | None = None) -> PoolConfig:
    return pool.model_copy(update={"warm_pool": WarmPool(min=0, max=0), "behavior": behavior,
                                   **({"targets": targets} if targets else {})})


@dataclass(frozen=True)
class Baseline:
    name: str
    title: str
    policy: Callable[..., Decision[Any]]
    initial_state: Callable[[PoolConfig, int], Any]
    adapt: Callable[[PoolConfig], PoolConfig]

    def fleet(self, cfg: FleetConfig) -> FleetConfig:
        return cfg.model_copy(update={"pools": tuple(self.adapt(p) for p in cfg.pools)})


def hpa() -> Baseline:
    """Kubernetes HPA with its default behavior, on the pool's own targets (a custom/external metric
    through an adapter). Source: Kubernetes docs "Horizontal Pod Autoscaling" (algorithm details,
    default behavior) and pkg/controller/podautoscaler/replica_calculator.go:
    desired = ceil(ready × value / target), no change within the 0.1 tolerance; every 15 s.
    A pod is ready (counted, routed) only once its model has loaded. Read optimistically: the
    metric is the latest scrape, without the Prometheus-adapter lag a real setup adds."""
    return Baseline("hpa", "Kubernetes HPA (defaults)", periodic(decide, 15.0),
                    lambda p, n: _Periodic(-math.inf, None, PolicyState(desired=n)),
                    lambda p: _no_warm(p, HPA_BEHAVIOR))


def keda() -> Baseline:
    """KEDA as vLLM production-stack's Helm chart configures it: a Prometheus trigger on
    `vllm:num_requests_waiting` with threshold 5 (AverageValue: desired = ceil(total waiting / 5)),
    polling every 15 s, minReplicaCount 1; between 1 and N replicas KEDA hands over to the HPA it
    creates, with the HPA's default behavior (300 s down-stabilization). Its cooldownPeriod (360 s)
    only governs scaling to zero, which minReplicaCount 1 rules out."""
    return Baseline("keda", "KEDA (vLLM production-stack)", periodic(decide, 15.0),
                    lambda p, n: _Periodic(-math.inf, None, PolicyState(desired=n)),
                    lambda p: _no_warm(p, HPA_BEHAVIOR, Targets(queue_depth=5)))


@dataclass(frozen=True)
class _Kpa:
    desired: int
    last_eval: float = -math.inf
    panic_time: float | None = None  # bumped each decision that is over the panic threshold
    max_panic_pods: int = 0


def knative_kpa(tick_s: float = 2.0, stable_s: float = 60.0, panic_s: float = 6.0, panic_threshold: float = 2.0,
                target_utilization: float = 0.7, max_scale_down_rate: float = 2.0,
                max_scale_up_rate: float = 1000.0) -> Baseline:
    """Knative's KPA (knative/serving pkg/autoscaler/scaling/autoscaler.go, config defaults in
    config-autoscaler): every 2 s, the average concurrency over the stable window (60 s) and the
    panic window (6 s, 10 %) of 1 s buckets; target = container concurrency × 0.7;
    desired = ceil(average / target) for each window, clamped to [floor(ready / max-scale-down-rate),
    ceil(max-scale-up-rate × ready)]; panic when the panic desired ≥ 2 × ready; in panic the count
    never goes down; the panic ends a full stable window after the last over-threshold decision.
    Container concurrency: the pool's `targets.concurrency` (what the user judged one replica takes),
    else the engine's batch size."""

    def policy(pool: PoolConfig, signals: Sequence[PoolSignals], view: PoolView, st: _Kpa,
               now: float) -> Decision[_Kpa]:
        lo, hi = pool.min_replicas, pool.max_replicas
        if now - st.last_eval < tick_s - 1e-9:
            return Decision(st.desired, 0, st.panic_time is not None, "kpa: between ticks", st)
        cc = pool.targets.concurrency or pool.sim.max_num_seqs or 256
        target = cc * target_utilization
        ready = max(view.active, 1)

        def avg(window: float) -> float:
            xs = [s.running + s.waiting for s in signals if s.t > now - window]
            return sum(xs) / len(xs) if xs else 0.0

        stable = math.ceil(avg(stable_s) / target)
        panic = math.ceil(avg(panic_s) / target)
        floor_, ceil_ = math.floor(ready / max_scale_down_rate), math.ceil(max_scale_up_rate * ready)
        stable = min(max(stable, floor_), ceil_)
        panic = min(max(panic, floor_), ceil_)
        over = panic / ready >= panic_threshold
        panic_time = now if over else st.panic_time
        if panic_time is not None and not over and now - panic_time >= stable_s:
            panic_time = None
        if panic_time is not None:
            # entering panic starts from what is ready; in panic the count only goes up
            desired = max(panic, st.max_panic_pods if st.panic_time is not None else ready)
            why = f"kpa panic: 6 s concurrency {avg(panic_s):.1f} vs target {target:g}/replica"
            max_panic = desired
        else:
            desired = stable
            why = f"kpa stable: 60 s concurrency {avg(stable_s):.1f} vs target {target:g}/replica"
            max_panic = 0
        desired = min(max(desired, lo), hi)
        return Decision(desired, 0, panic_time is not None, why, _Kpa(desired, now, panic_time, max_panic))

    return Baseline("knative", "Knative KPA (defaults)", policy, lambda p, n: _Kpa(desired=n),
                    lambda p: _no_warm(p, p.behavior))


@dataclass(frozen=True)
class _Apa:
    desired: int
    last_eval: float = -math.inf
    last_change: float = -math.inf


def aibrix_apa(period_s: float = 15.0, up_tolerance: float = 0.1, down_tolerance: float = 0.1,
               max_scale_up_rate: float = 2.0, max_scale_down_rate: float = 2.0,
               scale_down_cooldown_s: float = 300.0) -> Baseline:
    """AIBrix's APA (vllm-project/aibrix pkg/controller/podautoscaler/algorithm/apa.go and its scaling
    context defaults): r = value per pod / target; above 1 + 0.1 scale to ceil(current × r), at most
    ceil(2 × current); below 1 − 0.1 to ceil(current × r), at least floor(current / 2); a scale-down
    only 300 s after the last change (scale-up cooldown 0). The metric is the pool's concurrency per
    replica against `targets.concurrency`, averaged over the evaluation period; the period (15 s, like
    the HPA it builds on) is an assumption: APA's own resync is configurable."""

    def policy(pool: PoolConfig, signals: Sequence[PoolSignals], view: PoolView, st: _Apa,
               now: float) -> Decision[_Apa]:
        lo, hi = pool.min_replicas, pool.max_replicas
        if now - st.last_eval < period_s - 1e-9:
            return Decision(st.desired, 0, False, "apa: between evaluations", st)
        target = pool.targets.concurrency or 6.0
        window = [s for s in signals if s.t > now - period_s and s.ready]
        cur = st.desired
        if not window:
            return Decision(cur, 0, False, "apa: no metrics", replace(st, last_eval=now))
        per = sum((s.running + s.waiting) / s.ready for s in window) / len(window)
        r = per / target
        desired, why = cur, f"apa: {per:.1f}/replica vs target {target:g} within tolerance"
        if r > 1 + up_tolerance:
            desired = min(math.ceil(cur * r), math.ceil(max_scale_up_rate * cur))
            why = f"apa: up, {per:.1f}/replica vs target {target:g}"
        elif r < 1 - down_tolerance and now - st.last_change >= scale_down_cooldown_s:
            desired = max(math.ceil(cur * r), math.floor(cur / max_scale_down_rate))
            why = f"apa: down, {per:.1f}/replica vs target {target:g}"
        desired = min(max(desired, lo), hi)
        return Decision(desired, 0, False, why, _Apa(desired, now, now if desired != cur else st.last_change))

    return Baseline("aibrix", "AIBrix APA (defaults)", policy, lambda p, n: _Apa(desired=n),
                    lambda p: _no_warm(p, p.behavior))


def static(n: int) -> Baseline:
    """n replicas, always on, no autoscaler: what most teams run, sized for the peak."""

    def policy(pool: PoolConfig, signals: Sequence[PoolSignals], view: PoolView, st: Any, now: float) -> Decision[Any]:
        return Decision(n, 0, False, f"static: {n} replicas", st)

    return Baseline(f"static-{n}", f"static, {n} replicas", policy, lambda p, k: None,
                    lambda p: p.model_copy(update={"min_replicas": n, "max_replicas": max(n, p.max_replicas),
                                                   "warm_pool": WarmPool(min=0, max=0)}))


BASELINES: dict[str, Callable[[], Baseline]] = {
    "hpa": hpa, "keda": keda, "knative": knative_kpa, "aibrix": aibrix_apa,
}

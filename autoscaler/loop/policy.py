"""The scaling policy: one pure function per tick and pool.

    decide(pool, signals, view, state, now) -> Decision

No I/O and no clock reads: the caller passes the time and the policy's own
state (recommendation history, panic) and keeps the state it gets back. The
live controller, the unit tests and any simulator run this same code.

Rules, after Kubernetes HPA and Knative KPA:
- per signal: desired = ceil(ready * value / target), within a tolerance band
  no change; the max over signals;
- stabilization: scale up to the *min* recommendation of the up window, down
  to the *max* of the (long) down window;
- rate policies limit the change per period (from the count in force then);
- panic: demand >= threshold × ready jumps straight to the demand, bypassing
  the up-rate limits, and forbids scale-down until the panic has been quiet
  for panic_hold_s;
- warm pool: a floor from config, raised to the largest recent scale-up step,
  capped by warm_pool.max and by the room left under max_replicas;
- zero: requests the activator holds are demand (a pool at zero wakes on the
  first one); a pool with min_replicas 0 goes to zero only once it has had no
  request (running, waiting, held or finished) for scale_to_zero_after_s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from autoscaler.config import PoolConfig, RatePolicy, ScaleRules
from autoscaler.loop.signals import PoolSignals


@dataclass(frozen=True)
class PoolView:
    """Counts of the pool's replicas by role, as the controller observed them."""

    active: int  # routed (ready)
    warm: int = 0  # ready, not routed
    starting: int = 0
    draining: int = 0


@dataclass(frozen=True)
class PolicyState:
    desired: int | None = None
    recommendations: tuple[tuple[float, int], ...] = ()
    # (t, desired) each time the desired count changed; the rate policies' memory
    changes: tuple[tuple[float, int], ...] = ()
    panic_until: float | None = None
    scale_up_steps: tuple[tuple[float, int], ...] = ()
    last_active_at: float | None = None  # the last tick with any request in the pool


# the policy's own state: PolicyState for gpufleet's, each baseline its own (sim/baselines.py)
S = TypeVar("S")


@dataclass(frozen=True)
class Decision(Generic[S]):
    desired_active: int
    desired_warm: int
    panic: bool
    reason: str
    state: S = field(repr=False)
    recommendation: int | None = None
    # what drove the count: a signal's name, "panic", "held_requests", or "none" (no data, bounds)
    driver: str = "none"
    # each configured signal: (name, value per replica, target) — for dashboards, not for decisions
    signals: tuple[tuple[str, float, float], ...] = ()


def _per_signal(pool: PoolConfig, s: PoolSignals) -> list[tuple[str, float, float, int]]:
    """(signal, value per replica, target, proposal) for each configured target with data."""
    ready = s.ready
    out: list[tuple[str, float, float, int]] = []
    for name, target in pool.targets.items():
        if name == "queue_depth":
            total = s.waiting
        elif name == "concurrency":
            total = s.running + s.waiting
        elif name == "request_rate":
            if s.request_rate is None:
                continue
            total = s.request_rate
        elif name == "kv_cache_usage":
            total = s.kv_usage * ready
        else:  # ttft_p95_s: not additive; the HPA ratio on the pool's p95
            if s.ttft_p95_s is None:
                continue
            total = s.ttft_p95_s * ready
        per = total / ready
        ratio = per / target
        # round(): 3 * (4/3) must give 4, not 5
        in_band = abs(ratio - 1.0) <= pool.behavior.tolerance
        proposal = ready if in_band else math.ceil(round(ready * ratio, 9))
        out.append((name, per, target, proposal))
    return out


def _mean(signals: Sequence[PoolSignals]) -> PoolSignals:
    """Average the window's ticks (ready taken from the latest, so the ratio is for what serves now)."""
    n = len(signals)
    last = signals[-1]

    def avg(xs: list[float | None]) -> float | None:
        vals = [x for x in xs if x is not None]
        return sum(vals) / len(vals) if vals else None

    return PoolSignals(
        t=last.t,
        ready=last.ready,
        running=sum(s.running for s in signals) / n,
        waiting=sum(s.waiting for s in signals) / n + last.held,  # held by the activator: waiting too
        kv_usage=sum(s.kv_usage for s in signals) / n,
        ttft_p95_s=last.ttft_p95_s,
        request_rate=avg([s.request_rate for s in signals]),
    )


def _rate_limit(rules: ScaleRules, base: int, up: bool) -> int | None:
    """The furthest count the rate policies allow from `base` (None: no policy)."""
    limits: list[int] = []
    for p in rules.policies:
        limits.append(_one_limit(p, base, up))
    if not limits:
        return None
    # "max" selects the policy that allows the most change, as in HPA.
    most = max if up else min
    least = min if up else max
    return most(limits) if rules.select == "max" else least(limits)


def _one_limit(p: RatePolicy, base: int, up: bool) -> int:
    if p.type == "replicas":
        step = int(p.value)
    else:
        step = math.ceil(base * p.value / 100) if up else math.floor(base * p.value / 100)
    return base + step if up else base - step


def _count_at(changes: Sequence[tuple[float, int]], t: float, default: int) -> int:
    """The desired count in force at time t."""
    val = default
    for ct, c in changes:
        if ct <= t:
            val = c
        else:
            break
    return val


def decide(
    pool: PoolConfig,
    signals: Sequence[PoolSignals],
    view: PoolView,
    state: PolicyState,
    now: float,
) -> Decision[PolicyState]:
    b = pool.behavior
    lo, hi = pool.min_replicas, pool.max_replicas
    current = state.desired if state.desired is not None else min(max(view.active, lo), hi)
    window = [s for s in signals if now - b.metric_window_s < s.t <= now]
    last = window[-1] if window else None
    busy = last is not None and (last.held > 0 or last.running + last.waiting > 0 or bool(last.request_rate))
    state = replace(state, last_active_at=now if busy or state.last_active_at is None else state.last_active_at)

    if last is None or last.ready == 0:
        desired = min(max(current, lo), hi)
        why = "no ready replica to measure" if window else "no metrics yet"
        if last is not None and last.held > 0:
            each = pool.targets.concurrency or pool.targets.queue_depth or 1.0
            desired = max(desired, min(hi, max(1, math.ceil(last.held / each))))
            why = f"{last.held} requests held by the activator, no replica serving"
            return _finish(pool, state, now, current, desired, None, False, why, "held_requests")
        return _finish(pool, state, now, current, desired, None, False, why)

    mean = _mean(window)
    per = _per_signal(pool, mean)
    if not per:
        desired = min(max(current, lo), hi)
        return _finish(pool, state, now, current, desired, None, False, "no signal data")
    name, value, target, raw = max(per, key=lambda x: x[3])
    why = f"{name} {value:.2f}/replica vs target {target:g} → {raw}"

    # Panic: the short-window demand is far above what is serving now.
    panic_now = raw >= b.panic_threshold * max(mean.ready, 1) and raw > current
    panic_until = now + b.panic_hold_s if panic_now else state.panic_until
    panic = panic_until is not None and now <= panic_until

    horizon = max(b.scale_up.stabilization_s, b.scale_down.stabilization_s)
    recs = tuple((t, r) for t, r in state.recommendations if t >= now - horizon) + ((now, raw),)
    up_rec = min(r for t, r in recs if t >= now - b.scale_up.stabilization_s)
    down_rec = max(r for t, r in recs if t >= now - b.scale_down.stabilization_s)
    if up_rec > current:
        desired = up_rec
    elif down_rec < current:
        desired = down_rec
        why += f"; lowest held for {b.scale_down.stabilization_s:g}s"
    else:
        desired = current

    if panic:
        desired = max(desired, raw, current)  # jump to demand; never down in panic
        why += "; panic"
    elif desired > current:
        base = _count_at(state.changes, now - _period(b.scale_up), current)
        limit = _rate_limit(b.scale_up, max(base, 1), up=True)
        if limit is not None and desired > limit:
            desired = max(limit, current)
            why += f"; rate-limited to {desired}"
    elif desired < current:
        base = _count_at(state.changes, now - _period(b.scale_down), current)
        limit = _rate_limit(b.scale_down, base, up=False)
        if limit is not None and desired < limit:
            desired = min(limit, current)
            why += f"; rate-limited to {desired}"

    desired = min(max(desired, lo), hi)
    if desired == 0 and current > 0 and state.last_active_at is not None \
            and now - state.last_active_at < pool.scale_to_zero_after_s:
        desired = 1
        why += f"; to zero only after {pool.scale_to_zero_after_s:g}s without a request"
    elif desired == 0 and current > 0:
        why += f"; idle {pool.scale_to_zero_after_s:g}s: to zero"
    new_state = replace(state, recommendations=recs, panic_until=panic_until if panic else None)
    readings = tuple((n, v, t) for n, v, t, _ in per)
    return _finish(pool, new_state, now, current, desired, raw, panic, why, "panic" if panic else name, readings)


def _period(rules: ScaleRules) -> float:
    return max((p.period_s for p in rules.policies), default=0.0)


def _finish(
    pool: PoolConfig,
    state: PolicyState,
    now: float,
    current: int,
    desired: int,
    raw: int | None,
    panic: bool,
    why: str,
    driver: str = "none",
    signals: tuple[tuple[str, float, float], ...] = (),
) -> Decision[PolicyState]:
    b = pool.behavior
    keep_for = max(_period(b.scale_up), _period(b.scale_down))
    changes = tuple((t, c) for t, c in state.changes if t >= now - keep_for)
    # Keep the last change older than the horizon: it is the count in force then.
    older = [(t, c) for t, c in state.changes if t < now - keep_for]
    if older:
        changes = (older[-1], *changes)
    steps = tuple((t, s) for t, s in state.scale_up_steps if t >= now - pool.warm_pool.history_s)
    if state.desired is None or desired != state.desired:
        if not changes and state.desired is not None:
            # the count in force before the first change we saw, for the rate policies
            changes = ((-math.inf, state.desired),)
        changes = (*changes, (now, desired))
        if desired > current:
            steps = (*steps, (now, desired - current))
    warm = max([pool.warm_pool.min, *(s for _, s in steps)])
    warm = min(warm, pool.warm_pool.max, max(pool.max_replicas - desired, 0))
    new_state = replace(state, desired=desired, changes=changes, scale_up_steps=steps)
    return Decision(desired, warm, panic, why, new_state, raw, driver, signals)

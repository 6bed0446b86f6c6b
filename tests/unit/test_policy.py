"""The pure scaling policy: each rule, then properties over random load."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.config import PoolConfig
from autoscaler.loop.policy import Decision, PolicyState, PoolView, decide
from autoscaler.loop.signals import PoolSignals


def pool(**kw) -> PoolConfig:
    base = {"name": "p", "model": "m", "min_replicas": 1, "max_replicas": 10,
            "targets": {"concurrency": 4}, "warm_pool": {"min": 1, "max": 3},
            "behavior": {"scale_down": {"stabilization_s": 60, "policies": []},
                         "scale_up": {"stabilization_s": 0, "policies": []}}}
    base.update(kw)
    return PoolConfig.model_validate(base)


def sig(t: float, ready: int, concurrency: float, **kw) -> PoolSignals:
    return PoolSignals(t=t, ready=ready, running=concurrency, waiting=0.0, kv_usage=kw.get("kv", 0.0),
                       ttft_p95_s=kw.get("ttft"), request_rate=kw.get("rate"))


def run(p: PoolConfig, loads: list[tuple[float, float]], start: int = 1) -> list[Decision]:
    """Feed (t, total concurrency) ticks; ready follows the previous decision."""
    state = PolicyState(desired=start)
    ready = start
    out = []
    hist: list[PoolSignals] = []
    for t, c in loads:
        hist.append(sig(t, ready, c))
        d = decide(p, hist, PoolView(active=ready), state, t)
        state, ready = d.state, d.desired_active
        out.append(d)
    return out


def test_ratio_formula_and_max_over_signals():
    p = pool(targets={"concurrency": 4, "queue_depth": 1})
    s = PoolSignals(t=0, ready=2, running=8, waiting=6, kv_usage=0.1, ttft_p95_s=None, request_rate=None)
    d = decide(p, [s], PoolView(active=2), PolicyState(desired=2), 0)
    # concurrency: 14/4 -> 4; queue depth: 6/1 -> 6: the max wins
    assert d.desired_active == 6
    assert d.reason.startswith("queue_depth")


def test_tolerance_band_suppresses_small_changes():
    p = pool()
    d = decide(p, [sig(0, 4, 17)], PoolView(active=4), PolicyState(desired=4), 0)  # ratio 1.06
    assert d.desired_active == 4
    d = decide(p, [sig(0, 4, 19)], PoolView(active=4), PolicyState(desired=4), 0)  # ratio 1.19
    assert d.desired_active == 5


def test_kv_cache_and_ttft_and_rate_signals():
    kv = pool(targets={"kv_cache_usage": 0.5})
    d = decide(kv, [sig(0, 2, 0, kv=0.9)], PoolView(active=2), PolicyState(desired=2), 0)
    assert d.desired_active == math.ceil(2 * 0.9 / 0.5)
    tt = pool(targets={"ttft_p95_s": 1.0})
    d = decide(tt, [sig(0, 2, 0, ttft=3.0)], PoolView(active=2), PolicyState(desired=2), 0)
    assert d.desired_active == 6
    rr = pool(targets={"request_rate": 5})
    d = decide(rr, [sig(0, 1, 0, rate=22)], PoolView(active=1), PolicyState(desired=1), 0)
    assert d.desired_active == 5


def test_scale_down_waits_for_the_stabilization_window():
    p = pool()
    loads = [(t, 30.0) for t in range(0, 5)] + [(t, 2.0) for t in range(5, 80)]
    ds = run(p, loads, start=1)
    high = ds[4].desired_active
    assert high >= 8
    # Low load from t=5; the window (60 s) still remembers the peak until t=64.
    assert all(d.desired_active == high for d in ds[5:64])
    assert ds[65].desired_active < high
    assert ds[-1].desired_active == 1


def test_scale_up_stabilization_takes_the_window_minimum():
    p = pool(behavior={"scale_up": {"stabilization_s": 3, "policies": []},
                       "scale_down": {"stabilization_s": 60, "policies": []}})
    ds = run(p, [(0, 4.0), (1, 40.0), (2, 40.0), (3, 40.0), (4, 40.0)], start=1)
    # panic (10x) jumps at once regardless; without panic the window min holds it back:
    assert ds[1].panic and ds[1].desired_active == 10
    calm = pool(behavior={"scale_up": {"stabilization_s": 3, "policies": []},
                          "scale_down": {"stabilization_s": 60, "policies": []}, "panic_threshold": 100})
    ds = run(calm, [(0, 4.0), (1, 12.0), (2, 12.0), (3, 12.0), (4, 12.0)], start=1)
    assert [d.desired_active for d in ds] == [1, 1, 1, 1, 3]


def test_rate_policy_limits_scale_up_per_period():
    p = pool(max_replicas=20, behavior={
        "panic_threshold": 100,
        "scale_up": {"stabilization_s": 0, "policies": [{"type": "replicas", "value": 2, "period_s": 10}]},
        "scale_down": {"stabilization_s": 0, "policies": []}})
    ds = run(p, [(t, 60.0) for t in range(0, 25)], start=2)
    counts = [d.desired_active for d in ds]
    assert counts[0] == 4  # +2 in the first period
    assert counts[9] == 4  # still within that period
    assert counts[10] == 6 and counts[20] == 8


def test_percent_rate_policy_limits_scale_down():
    p = pool(min_replicas=1, max_replicas=20, behavior={
        "scale_up": {"stabilization_s": 0, "policies": []},
        "scale_down": {"stabilization_s": 0, "policies": [{"type": "percent", "value": 50, "period_s": 10}]}})
    ds = run(p, [(t, 0.0) for t in range(0, 25)], start=16)
    counts = [d.desired_active for d in ds]
    assert counts[0] == 8 and counts[9] == 8 and counts[10] == 4 and counts[20] == 2


def test_panic_jumps_to_demand_and_forbids_scale_down_until_quiet():
    p = pool(behavior={"panic_threshold": 2, "panic_hold_s": 10,
                       "scale_up": {"stabilization_s": 0,
                                    "policies": [{"type": "replicas", "value": 1, "period_s": 60}]},
                       "scale_down": {"stabilization_s": 0, "policies": []}})
    loads = [(0, 4.0), (1, 36.0)] + [(t, 0.0) for t in range(2, 20)]
    ds = run(p, loads, start=1)
    assert ds[1].panic and ds[1].desired_active == 9, "panic ignores the +1/60s rate limit"
    assert all(d.desired_active == 9 and d.panic for d in ds[2:12]), "no scale-down during panic"
    assert not ds[13].panic and ds[13].desired_active == 1


def test_warm_pool_floor_raised_by_recent_scale_up_and_capped():
    p = pool(warm_pool={"min": 1, "max": 3, "history_s": 100})
    ds = run(p, [(0, 4.0), (1, 12.0)], start=1)
    assert ds[0].desired_warm == 1
    assert ds[1].desired_active == 3 and ds[1].desired_warm == 2  # the last step was +2
    big = run(p, [(0, 4.0), (1, 40.0)], start=1)
    assert big[1].desired_warm == 0, "no room for warm replicas at max_replicas"
    mid = run(pool(max_replicas=20, warm_pool={"min": 1, "max": 3, "history_s": 100}),
              [(0, 4.0), (1, 40.0)], start=1)
    assert mid[1].desired_warm == 3, "capped by warm_pool.max"


def test_no_metrics_keeps_current_within_bounds():
    p = pool(min_replicas=2)
    d = decide(p, [], PoolView(active=0), PolicyState(), 0)
    assert d.desired_active == 2 and "no metrics" in d.reason


loads = st.lists(st.floats(min_value=0, max_value=200, allow_nan=False), min_size=1, max_size=80)


@settings(max_examples=150, deadline=None)
@given(loads, st.integers(1, 3), st.integers(3, 12))
def test_property_never_outside_min_max(seq, lo, hi):
    p = pool(min_replicas=lo, max_replicas=hi)
    for d in run(p, list(enumerate(seq)), start=lo):
        assert lo <= d.desired_active <= hi
        assert 0 <= d.desired_warm <= p.warm_pool.max
        assert d.desired_active + d.desired_warm <= max(hi, d.desired_active)


@settings(max_examples=150, deadline=None)
@given(loads)
def test_property_no_scale_down_during_panic(seq):
    p = pool(behavior={"scale_down": {"stabilization_s": 0, "policies": []}, "panic_hold_s": 5})
    ds = run(p, list(enumerate(seq)))
    for prev, d in zip(ds, ds[1:], strict=False):
        if d.panic:
            assert d.desired_active >= prev.desired_active


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0, max_value=40), st.integers(1, 8))
def test_property_constant_load_converges_without_flapping(load, start):
    p = pool(behavior={"scale_down": {"stabilization_s": 10, "policies": []}})
    ds = run(p, [(t, load) for t in range(120)], start=start)
    tail = [d.desired_active for d in ds[-40:]]
    assert len(set(tail)) == 1, f"flapping under constant load: {tail}"
    changes = sum(1 for a, b in zip(ds, ds[1:], strict=False) if a.desired_active != b.desired_active)
    assert changes <= 3


def test_held_requests_wake_a_pool_at_zero_in_one_tick():
    p = pool(min_replicas=0, warm_pool={"min": 0, "max": 0})
    st = PolicyState(desired=0)
    idle = decide(p, [PoolSignals(1.0, 0, 0, 0, 0, None, None)], PoolView(active=0), st, 1.0)
    assert idle.desired_active == 0, "min_replicas 0 and nothing asked: nothing starts"
    held = PoolSignals(2.0, 0, 0, 0, 0, None, None, held=9)
    d = decide(p, [held], PoolView(active=0), idle.state, 2.0)
    assert d.desired_active == 3 and "held by the activator" in d.reason  # ceil(9 / 4 per replica)


def test_a_pool_goes_to_zero_only_after_its_idle_window():
    p = pool(min_replicas=0, warm_pool={"min": 0, "max": 0}, scale_to_zero_after_s=30,
             behavior={"scale_down": {"stabilization_s": 5, "policies": []},
                       "scale_up": {"stabilization_s": 0, "policies": []}})
    loads = [(float(t), 2.0 if t < 10 else 0.0) for t in range(0, 60)]
    ds = run(p, loads, start=1)
    first_zero = next(t for (t, _), d in zip(loads, ds, strict=True) if d.desired_active == 0)
    assert 39 <= first_zero <= 41, f"last request at t=9, window 30 s: zero at ~t=39, not {first_zero}"
    assert all(d.desired_active >= 1 for (t, _), d in zip(loads, ds, strict=True) if t < 39)

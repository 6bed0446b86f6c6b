"""reconcile(): one rule per test, as a table — a snapshot in, the actions and routes out.

Every rule the controller's tick used to apply inline (evict, promote, finish
drain, demote, policy, plan, placement, routes) is covered here without a
process, a socket or a clock.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from autoscaler.config import parse_config
from autoscaler.gpus.topology import Link, LinkKind, uniform_topology
from autoscaler.loop.policy import PolicyState
from autoscaler.loop.reconcile import reconcile
from autoscaler.loop.signals import ReplicaSample
from autoscaler.loop.snapshot import GpuView, PoolState, ReplicaObs, Snapshot

NOW = 1000.0


def fleet(**pool: Any):
    p: dict[str, Any] = {"name": "chat", "model": "m", "gpus_per_replica": 1, "min_replicas": 1, "max_replicas": 4,
                         "warm_pool": {"min": 0, "max": 0}, "targets": {"concurrency": 4},
                         "drain_timeout_s": 30}
    p.update(pool)
    return parse_config({"pools": [p], "gpus": {"source": "none"}, "unhealthy_after": 3})


def sample(load: float = 0.0, t: float = NOW - 0.1) -> ReplicaSample:
    return ReplicaSample(t=t, running=load, waiting=0.0, kv_usage=0.0, ttft_buckets=(), requests_total=0.0)


def rep(rid: str, role: str = "active", *, target: str | None = None, load: float = 0.0, since: float = 0.0,
        gpu: int | None = None, **kw: Any) -> ReplicaObs:
    # a loading replica started moments ago (an old one would be past its start deadline)
    base: dict[str, Any] = dict(id=rid, pool="chat", role=role, target_role=target or role,
                                created_at=NOW - 5 if role == "starting" else 0.0,
                                role_since=since, alive=True, ready=role != "starting", upstream=f"10.0.0.{rid}:8000",
                                gpus=(f"vslot{gpu}",) if gpu is not None else (), samples=(sample(load),),
                                config_hash=fleet().pools[0].config_hash())
    base.update(kw)
    return ReplicaObs(**base)


def snap(*reps: ReplicaObs, routed: set[str] | None = None, pending: bool = False, slots: int = 4,
         cordoned: frozenset[str] = frozenset()) -> Snapshot:
    routed = {r.id for r in reps if r.role == "active"} if routed is None else routed
    return Snapshot(now=NOW, replicas=tuple(reps), gpus=GpuView(uniform_topology(slots, Link(LinkKind.PHB)), cordoned),
                    routed=frozenset(routed), gateway_pending=pending)


def steady(desired: int, warm: int = 0) -> dict[str, PoolState]:
    """A pool that has been running at `desired` for a while (no change pending)."""
    from autoscaler.loop.policy import Decision

    st = PolicyState(desired=desired, changes=((0.0, desired),), recommendations=((NOW - 10, desired),))
    return {"chat": PoolState(policy=st, decision=Decision(desired, warm, False, "steady", st))}


def acts(out) -> list[tuple]:
    return [(a.kind, a.replica, a.role) for a in out.actions]


def servers(out) -> tuple[str, ...]:
    return out.routes[0].servers


# ---- 1. evict -------------------------------------------------------------------------------


def test_a_dead_replica_is_stopped_and_not_routed():
    out = reconcile(fleet(), snap(rep("1", gpu=0), rep("2", gpu=1, alive=False)), steady(2), NOW)
    assert ("stop", "2", None) in acts(out)
    assert next(a for a in out.actions if a.replica == "2").reason == "process/container exited"
    assert servers(out) == ("10.0.0.1:8000",)


def test_a_replica_failing_its_health_checks_is_stopped_but_a_loading_one_is_not():
    failing = rep("2", gpu=1, failures=3, last_error="ReadTimeout", ready=False)
    loading = rep("3", "starting", target="active", gpu=2, failures=5)
    out = reconcile(fleet(), snap(rep("1", gpu=0), failing, loading), steady(3), NOW)
    stops = [a for a in out.actions if a.kind == "stop"]
    assert [a.replica for a in stops] == ["2"]
    assert "failed 3 health checks: ReadTimeout" in stops[0].reason


def test_two_failed_scrapes_are_not_yet_an_eviction():
    out = reconcile(fleet(), snap(rep("1", gpu=0), rep("2", gpu=1, failures=2)), steady(2), NOW)
    assert not [a for a in out.actions if a.kind == "stop"]


def test_a_replica_not_ready_by_its_engines_start_deadline_is_stopped_and_backs_off():
    cfg = fleet(start_timeout_s=60, start_backoff_s=5)
    loading = rep("2", "starting", target="active", gpu=1, created_at=NOW - 61, ready=False,
                  last_error="/health: ConnectError")
    out = reconcile(cfg, snap(rep("1", gpu=0), loading), steady(2), NOW)
    assert ("stop", "2", None) in acts(out)
    ev = next(e for e in out.events if e.kind == "start_timeout")
    assert ev.detail["replica"] == "2" and ev.detail["gpus"] == ["vslot1"] and ev.detail["crashes"] == 1
    assert out.states["chat"].crashes == 1
    # a second one in a row waits the backoff before the next cold start
    again = reconcile(cfg, snap(rep("1", gpu=0), replace(loading, id="3")), out.states, NOW + 1)
    assert again.states["chat"].backoff_until == NOW + 1 + 5
    assert not [a for a in again.actions if a.kind == "start"]
    # one second younger than the deadline: it may still load; the sim engine's default leaves its load time
    young = reconcile(cfg, snap(rep("1", gpu=0), replace(loading, created_at=NOW - 59)), steady(2), NOW)
    assert ("stop", "2", None) not in acts(young)
    big = fleet(sim={"profile": "tiny", "load_time_s": 100})
    assert big.pools[0].engine_spec.start_timeout_s >= 300


# ---- 2. promote -----------------------------------------------------------------------------


def test_a_ready_loading_replica_becomes_its_target_role_and_is_routed_at_once():
    loaded = rep("2", "starting", target="active", gpu=1, ready=True, created_at=990.0)
    out = reconcile(fleet(), snap(rep("1", gpu=0, since=10.0), loaded), steady(2), NOW)
    promote = next(a for a in out.actions if a.kind == "promote")
    assert (promote.replica, promote.role, promote.detail["load_s"]) == ("2", "active", 10.0)
    assert servers(out) == ("10.0.0.2:8000", "10.0.0.1:8000"), "newest-activated first"


def test_a_loading_replica_not_ready_yet_is_left_alone_and_not_routed():
    out = reconcile(fleet(), snap(rep("1", gpu=0), rep("2", "starting", target="active", gpu=1)), steady(2), NOW)
    assert acts(out) == []
    assert servers(out) == ("10.0.0.1:8000",)


def test_a_ready_warm_target_becomes_warm_and_is_not_routed():
    loaded = rep("2", "starting", target="warm", gpu=1, ready=True)
    out = reconcile(fleet(warm_pool={"min": 1, "max": 1}), snap(rep("1", gpu=0), loaded), steady(1, warm=1), NOW)
    assert ("promote", "2", "warm") in acts(out)
    assert servers(out) == ("10.0.0.1:8000",)


# ---- 3. finish drains ---------------------------------------------------------------------


def unrouted(states: dict[str, PoolState], **since: float) -> dict[str, PoolState]:
    """States in which nginx dropped these draining replicas at these times."""
    return {"chat": replace(states["chat"], unrouted_since=since)}


@pytest.mark.parametrize(("load", "dropped", "routed", "pending", "done"), [
    (0, NOW - 5, set(), False, True),           # empty, out of nginx for a while: done
    (2, NOW - 5, set(), False, False),          # still has requests
    (0, None, set(), False, False),             # nginx dropped it just now: settle first
    (0, NOW - 5, {"2"}, False, False),          # nginx routes it (again): not drained
    (0, NOW - 5, set(), True, False),           # a reload is pending
    (3, NOW - 31, set(), False, True),          # drain timeout, counted from the drop: goes whatever is left
    (3, None, {"2"}, False, False),             # draining for ages but still routed: the timeout has not begun
])
def test_a_drain_counts_only_from_when_nginx_no_longer_routes_the_replica(load, dropped, routed, pending, done):
    d = rep("2", "draining", gpu=1, load=load, since=NOW - 500)
    states = unrouted(steady(1), **({"2": dropped} if dropped is not None else {}))
    out = reconcile(fleet(), snap(rep("1", gpu=0), d, routed={"1", *routed}, pending=pending), states, NOW)
    assert (("stop", "2", None) in acts(out)) == done
    if not done and not routed and not pending:
        assert out.states["chat"].unrouted_since["2"] == (dropped if dropped is not None else NOW)


def test_a_drained_replica_is_demoted_when_the_pool_wants_a_warm_one():
    d = rep("2", "draining", gpu=1, since=NOW - 5)
    out = reconcile(fleet(warm_pool={"min": 1, "max": 1}), snap(rep("1", gpu=0), d),
                    unrouted(steady(1, warm=1), **{"2": NOW - 5}), NOW)
    assert ("demote", "2", "warm") in acts(out)
    assert not [a for a in out.actions if a.kind == "start"], "the demoted replica fills the warm pool"


def test_a_drained_replica_of_an_old_config_is_stopped_not_demoted():
    d = rep("2", "draining", gpu=1, since=NOW - 5, config_hash="old")
    out = reconcile(fleet(warm_pool={"min": 1, "max": 1}), snap(rep("1", gpu=0), d),
                    unrouted(steady(1, warm=1), **{"2": NOW - 5}), NOW)
    assert ("stop", "2", None) in acts(out)


# ---- 4. policy, plan, placement -------------------------------------------------------------


def test_scale_up_activates_the_warm_replica_first_and_routes_it_first():
    pool = fleet(warm_pool={"min": 1, "max": 1})
    busy = rep("1", gpu=0, load=12)
    out = reconcile(pool, snap(busy, rep("2", "warm", gpu=1)), steady(1, warm=1), NOW)
    kinds = [a.kind for a in out.actions]
    assert kinds[0] == "activate" and out.actions[0].replica == "2"
    assert servers(out)[0] == "10.0.0.2:8000"
    starts = [a for a in out.actions if a.kind == "start"]
    assert starts and all(a.spec is not None and a.spec.gpus for a in starts)
    assert {g for a in starts for g in a.spec.gpus}.isdisjoint({"vslot0", "vslot1"})


def test_gpus_of_a_replica_still_stopping_are_not_handed_out():
    stopping = rep("9", "active", gpu=1, stopping=True)
    out = reconcile(fleet(max_replicas=3), snap(rep("1", gpu=0, load=12), stopping, slots=3), steady(1), NOW)
    starts = [a for a in out.actions if a.kind == "start"]
    assert [a.spec.gpus for a in starts] == [("vslot2",)]
    assert not [a for a in out.actions if a.replica == "9"], "a replica being stopped is not stopped again"
    assert [e.kind for e in out.events].count("no_capacity") == 1


def test_no_capacity_is_reported_once_not_every_tick():
    s = snap(rep("1", gpu=0, load=12), slots=1)
    first = reconcile(fleet(), s, steady(1), NOW)
    assert [e.detail["reason"] for e in first.events if e.kind == "no_capacity"] == \
        ["no free GPUs for a 1-GPU replica"]
    second = reconcile(fleet(), replace(s, now=NOW + 1), first.states, NOW + 1)
    assert not [e for e in second.events if e.kind == "no_capacity"]


def test_cordoned_gpus_are_never_placed():
    out = reconcile(fleet(), snap(rep("1", gpu=0, load=12), slots=3, cordoned=frozenset({"vslot1"})), steady(1), NOW)
    assert [a.spec.gpus for a in out.actions if a.kind == "start"] == [("vslot2",)]


def test_scale_down_drains_and_unroutes_the_least_loaded():
    pool = fleet(behavior={"scale_down": {"stabilization_s": 0, "policies": []}})
    reps = (rep("1", gpu=0, load=2), rep("2", gpu=1, load=0))
    out = reconcile(pool, snap(*reps), steady(2), NOW)
    assert acts(out) == [("drain", "2", "draining")]
    assert servers(out) == ("10.0.0.1:8000",)


def test_after_a_restart_the_policy_starts_from_what_is_routed_not_from_min():
    reps = (rep("1", gpu=0, load=4), rep("2", gpu=1, load=4), rep("3", gpu=2, load=4))
    out = reconcile(fleet(), snap(*reps), {}, NOW)
    assert out.states["chat"].decision.desired_active == 3
    assert not [a for a in out.actions if a.kind in ("drain", "stop")]


def test_a_decision_event_only_when_the_decision_changes():
    s = snap(rep("1", gpu=0, load=4))
    first = reconcile(fleet(), s, {}, NOW)
    assert [e.kind for e in first.events] == ["decision"]
    again = reconcile(fleet(), replace(s, now=NOW + 1), first.states, NOW + 1)
    assert again.events == ()


def test_signals_come_from_routed_replicas_only():
    # the warm replica's load (it has none, but say it had) must not count; two routed at 4 each = target
    reps = (rep("1", gpu=0, load=4), rep("2", gpu=1, load=4), rep("3", "warm", gpu=2, load=50))
    out = reconcile(fleet(warm_pool={"min": 1, "max": 1}), snap(*reps), steady(2, warm=1), NOW)
    sig = out.states["chat"].signals[-1]
    assert (sig.ready, sig.running) == (2, 8)
    assert acts(out) == []


def test_a_loading_replica_is_retarget_to_warm_when_demand_falls():
    pool = fleet(warm_pool={"min": 1, "max": 1}, behavior={"scale_down": {"stabilization_s": 0, "policies": []}})
    reps = (rep("1", gpu=0, load=1), rep("2", "starting", target="active", gpu=1))
    out = reconcile(pool, snap(*reps), steady(2, warm=1), NOW)
    assert ("retarget", "2", "starting") in acts(out)
    assert next(a for a in out.actions if a.kind == "retarget").target == "warm"


def test_pools_are_reconciled_independently():
    cfg = parse_config({"gpus": {"source": "none"}, "pools": [
        {"name": "a", "model": "ma", "gpus_per_replica": 1, "warm_pool": {"min": 0, "max": 0},
         "targets": {"concurrency": 4}},
        {"name": "b", "model": "mb", "gpus_per_replica": 1, "warm_pool": {"min": 0, "max": 0},
         "targets": {"concurrency": 4}}]})
    a = replace(rep("1", gpu=0, alive=False), pool="a")
    b = replace(rep("2", gpu=1, load=1), pool="b")
    out = reconcile(cfg, snap(a, b), {}, NOW)
    assert [r.servers for r in out.routes] == [(), ("10.0.0.2:8000",)]
    assert ("stop", "1", None) in acts(out)
    assert [(a.kind, a.pool) for a in out.actions if a.kind == "start"] == [("start", "a")]


# ---- faults ---------------------------------------------------------------------------------


def test_a_gpu_with_two_live_holders_keeps_the_serving_one_and_retires_the_other():
    serving = rep("1", gpu=0, created_at=50.0)
    stray = rep("2", "warm", gpu=0, created_at=10.0)  # older, but not serving
    out = reconcile(fleet(), snap(serving, stray, routed={"1"}), steady(1), NOW)
    stops = [a for a in out.actions if a.kind == "stop"]
    assert [a.replica for a in stops] == ["2"]
    assert "vslot0" in stops[0].reason and "1" in stops[0].reason
    assert servers(out) == ("10.0.0.1:8000",)
    # nothing new lands on vslot0 while the retired holder is on its way out
    starts = [a for a in out.actions if a.kind == "start"]
    assert all("vslot0" not in a.spec.gpus for a in starts)


def test_between_two_loading_holders_of_a_gpu_the_older_stays():
    a = rep("1", "starting", target="active", gpu=0, created_at=NOW - 30, ready=False)
    b = rep("2", "starting", target="active", gpu=0, created_at=NOW - 20, ready=False)
    out = reconcile(fleet(), snap(a, b), steady(1), NOW)
    assert [a.replica for a in out.actions if a.kind == "stop"] == ["2"]


def test_crashes_back_off_exponentially_and_a_first_crash_is_replaced_at_once():
    cfg = fleet(start_backoff_s=2, start_backoff_max_s=10)
    states = steady(1)
    delays = []
    t = NOW
    for _ in range(5):
        dead = rep("9", "starting", target="active", gpu=0, alive=False, ready=False)
        out = reconcile(cfg, replace(snap(dead), now=t), states, t)
        states = dict(out.states)
        st = states["chat"]
        delays.append(round(st.backoff_until - t, 3))
        started = [a for a in out.actions if a.kind == "start"]
        assert bool(started) == (delays[-1] == 0), "a start only when not backing off"
        assert [e.detail["crashes"] for e in out.events if e.kind == "crash"] == [st.crashes]
        # during the backoff: still no start
        if delays[-1] > 0:
            later = reconcile(cfg, replace(snap(), now=t + delays[-1] / 2), states, t + delays[-1] / 2)
            assert not [a for a in later.actions if a.kind == "start"]
            after = reconcile(cfg, replace(snap(), now=t + delays[-1]), states, t + delays[-1])
            assert [a for a in after.actions if a.kind == "start"]
        t += delays[-1] + 1
    assert delays == [0, 2, 4, 8, 10]
    # a long quiet spell: the count starts again
    out = reconcile(cfg, replace(snap(rep("9", gpu=0, alive=False)), now=t + 100), states, t + 100)
    assert out.states["chat"].crashes == 1 and out.states["chat"].backoff_until == t + 100


def test_an_exception_in_one_pools_step_is_an_event_and_the_other_pool_goes_on():
    cfg = parse_config({"gpus": {"source": "none"}, "pools": [
        {"name": "a", "model": "ma", "min_replicas": 2, "targets": {"concurrency": 4}},
        {"name": "b", "model": "mb", "min_replicas": 2, "targets": {"concurrency": 4}}]})

    def policy(p, signals, view, state, now):
        if p.name == "a":
            raise ZeroDivisionError("bad signal")
        from autoscaler.loop.policy import decide
        return decide(p, signals, view, state, now)

    a = replace(rep("1", gpu=0), pool="a")
    b = replace(rep("2", gpu=1), pool="b")
    out = reconcile(cfg, snap(a, b), {}, NOW, policy=policy)
    assert [(e.kind, e.pool) for e in out.events if e.kind == "pool_error"] == [("pool_error", "a")]
    assert out.states["a"].error == "ZeroDivisionError: bad signal"
    assert {a.pool for a in out.actions if a.kind == "start"} == {"b"}, "pool b scales; pool a is left as it was"
    assert [r.servers for r in out.routes] == [("10.0.0.1:8000",), ("10.0.0.2:8000",)], "a keeps serving"
    again = reconcile(cfg, snap(a, b), out.states, NOW + 1, policy=policy)
    assert not [e for e in again.events if e.kind == "pool_error"], "the same error is one event, not one a tick"


# ---- sleep mode ---------------------------------------------------------------------------


def test_scaling_up_onto_a_sleeping_warm_replica_wakes_it_and_prefers_an_awake_one():
    cfg = fleet(warm_pool={"min": 1, "max": 2})
    sleeper = rep("2", "warm", gpu=1, sleeping=True, created_at=1.0)
    out = reconcile(cfg, snap(rep("1", gpu=0, load=6), sleeper, slots=4), steady(1, warm=1), NOW)
    assert ("wake", "2", None) in acts(out) and ("activate", "2", "active") not in acts(out)
    assert not [a for a in out.actions if a.kind == "start" and a.role == "active"], "no cold start meanwhile"
    awake = rep("3", "warm", gpu=2, created_at=5.0)
    out = reconcile(cfg, snap(rep("1", gpu=0, load=6), sleeper, awake, slots=4), steady(1, warm=2), NOW)
    assert ("activate", "3", "active") in acts(out), "the awake one is activated first, though newer"


def test_warm_pool_asleep_puts_idle_warm_replicas_to_sleep_and_sleepers_give_their_gpus_back():
    cfg = fleet(warm_pool={"min": 1, "max": 1, "asleep": 1})
    w = rep("2", "warm", gpu=1)
    out = reconcile(cfg, snap(rep("1", gpu=0), w, slots=2), steady(1, warm=1), NOW)
    assert ("sleep", "2", None) in acts(out)
    # no free GPU for a scale-up: the sleeping warm replica of a lower-priority pool is reclaimed
    cfg2 = parse_config({"gpus": {"source": "none"}, "pools": [
        {"name": "chat", "model": "m", "gpus_per_replica": 1, "priority": 10, "warm_pool": {"min": 0, "max": 0},
         "targets": {"concurrency": 4}},
        {"name": "batch", "model": "b", "gpus_per_replica": 1, "min_replicas": 0, "priority": 0,
         "warm_pool": {"min": 1, "max": 1, "asleep": 1}, "targets": {"concurrency": 4}}]})
    sleeper = replace(rep("2", "warm", gpu=1, sleeping=True), pool="batch")
    out = reconcile(cfg2, snap(rep("1", gpu=0, load=12), sleeper, slots=2), steady(1), NOW)
    stops = [a for a in out.actions if a.kind == "stop"]
    assert [(a.replica, a.pool) for a in stops] == [("2", "batch")] and "reclaimed" in stops[0].reason
    assert "reclaimed" in (out.states["chat"].no_capacity or "")


def test_a_start_the_runtime_refused_counts_towards_the_backoff_here_not_in_the_actuator():
    from autoscaler.loop.actions import StartFailure

    cfg = fleet(start_backoff_s=5, min_replicas=2)
    fail = StartFailure("chat", "active", "ImageNotFound: gpufleet/replica:missing")
    first = reconcile(cfg, replace(snap(rep("1", gpu=0)), start_failures=(fail,)), steady(2), NOW)
    ev = [e for e in first.events if e.kind == "start_failed"]
    assert [(e.pool, e.detail["target"], e.detail["crashes"]) for e in ev] == [("chat", "active", 1)]
    assert "ImageNotFound" in ev[0].detail["reason"]
    # a first failure is retried at once; a second in a row waits the backoff before the next cold start
    assert [a.kind for a in first.actions].count("start") == 1
    second = reconcile(cfg, replace(snap(rep("1", gpu=0)), now=NOW + 1, start_failures=(fail,)),
                       first.states, NOW + 1)
    assert second.states["chat"].crashes == 2 and second.states["chat"].backoff_until == NOW + 1 + 5
    assert not [a for a in second.actions if a.kind == "start"]

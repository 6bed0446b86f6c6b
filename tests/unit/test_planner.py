from __future__ import annotations

from autoscaler.loop.planner import ReplicaView, drain_finished, plan


def rv(rid, role, target=None, ready=True, load=0.0, created=0.0, since=0.0) -> ReplicaView:
    return ReplicaView(rid, role, target or role, ready, load, created, since)


def kinds(actions):
    """(kind, replica, the role it ends in): a retargeted replica stays starting, for its new target."""
    assert all(a.pool == "p" for a in actions)
    return [(a.kind, a.replica, a.target if a.kind == "retarget" else a.role) for a in actions]


def test_scale_up_activates_warm_first_then_backfills():
    reps = [rv("a1", "active"), rv("w1", "warm", created=1), rv("w2", "warm", created=2)]
    acts = plan("p", desired_active=4, desired_warm=1, replicas=reps)
    assert kinds(acts)[:2] == [("activate", "w1", "active"), ("activate", "w2", "active")]
    starts = [a.role for a in acts if a.kind == "start"]
    assert starts == ["active", "warm"], "one more for active, one to refill the warm pool"


def test_loading_warm_replica_is_retargeted_before_new_cold_start():
    reps = [rv("a1", "active"), rv("s1", "starting", "warm", ready=False)]
    acts = plan("p", desired_active=2, desired_warm=0, replicas=reps)
    assert kinds(acts) == [("retarget", "s1", "active")]


def test_scale_down_drains_least_loaded_and_never_stops_active():
    reps = [rv("a1", "active", load=3), rv("a2", "active", load=0, created=5), rv("a3", "active", load=1)]
    acts = plan("p", desired_active=1, desired_warm=0, replicas=reps)
    assert kinds(acts) == [("drain", "a2", "draining"), ("drain", "a3", "draining")]
    assert not [a for a in acts if a.kind == "stop"]


def test_scale_down_sends_loading_replicas_to_warm_pool():
    reps = [rv("a1", "active"), rv("s1", "starting", "active", ready=False)]
    acts = plan("p", desired_active=1, desired_warm=1, replicas=reps)
    assert kinds(acts) == [("retarget", "s1", "warm")]


def test_surplus_warm_stops_loading_ones_first():
    reps = [rv("a1", "active"), rv("w1", "warm", created=1), rv("s1", "starting", "warm", ready=False)]
    acts = plan("p", desired_active=1, desired_warm=1, replicas=reps)
    assert kinds(acts) == [("stop", "s1", None)]


def test_steady_state_plans_nothing():
    reps = [rv("a1", "active"), rv("a2", "active"), rv("w1", "warm"), rv("d1", "draining", load=2)]
    assert plan("p", desired_active=2, desired_warm=1, replicas=reps) == []


def test_drain_finishes_on_empty_after_settle_or_on_timeout():
    busy = rv("d", "draining", load=2, since=100)
    assert drain_finished(busy, 105, timeout_s=30, settle_s=1) is None
    assert "timeout" in drain_finished(busy, 131, timeout_s=30, settle_s=1)
    empty = rv("d", "draining", load=0, since=100)
    assert drain_finished(empty, 100.5, timeout_s=30, settle_s=1) is None, "wait for the reload to settle"
    assert "drained" in drain_finished(empty, 101.5, timeout_s=30, settle_s=1)

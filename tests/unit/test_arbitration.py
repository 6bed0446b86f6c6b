"""GPUs between pools (autoscaler.loop.arbiter through reconcile): priorities, reclaim by drain, equal shares,
guaranteed minimums, fragmentation moves. Snapshots in, actions and claims out; tick by tick where the
rule is about what happens next."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from autoscaler.config import FleetConfig, parse_config
from autoscaler.gateway.routing import SaturationState, next_saturation
from autoscaler.gpus.topology import Link, LinkKind, Topology, load_topology_file, uniform_topology
from autoscaler.loop.lifecycle import fleet_sizes
from autoscaler.loop.policy import Decision, PolicyState
from autoscaler.loop.reconcile import reconcile
from autoscaler.loop.signals import ReplicaSample
from autoscaler.loop.snapshot import GpuView, PoolState, ReplicaObs, Snapshot

NOW = 1000.0
TOPO = Path(__file__).resolve().parent.parent / "fixtures" / "topology"
A100_PAIR = TOPO / "4xa100-pcie-nv12-bridge-pair-2socket-mlx.txt"  # only GPU0-GPU1 is NVLink


def pool(name: str, **kw: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "model": f"m-{name}", "gpus_per_replica": 1, "min_replicas": 1,
                         "max_replicas": 4, "warm_pool": {"min": 0, "max": 0}, "targets": {"concurrency": 4},
                         "drain_timeout_s": 30}
    p.update(kw)
    return p


def fleet(*pools: dict[str, Any]) -> FleetConfig:
    return parse_config({"pools": list(pools), "gpus": {"source": "none"}})


def rep(cfg: FleetConfig, rid: str, pool_name: str, role: str = "active", *, gpus: tuple[str, ...] = (),
        load: float = 0.0, target: str | None = None, **kw: Any) -> ReplicaObs:
    base: dict[str, Any] = dict(
        id=rid, pool=pool_name, role=role, target_role=target or role, created_at=float(len(rid)), role_since=0.0,
        alive=True, ready=role != "starting", upstream=f"{rid}:8000", gpus=gpus,
        samples=(ReplicaSample(t=NOW - 0.1, running=load, waiting=0.0, kv_usage=0.0, ttft_buckets=(),
                               requests_total=0.0),),
        config_hash=cfg.pool(pool_name).config_hash())
    base.update(kw)
    return ReplicaObs(**base)


def with_load(r: ReplicaObs, load: float, **kw: Any) -> ReplicaObs:
    return replace(r, samples=(replace(r.samples[0], running=load),), **kw)


def slots(n: int) -> Topology:
    return uniform_topology(n, Link(LinkKind.PHB))


def snap(topo: Topology, *reps: ReplicaObs, routed: set[str] | None = None, now: float = NOW) -> Snapshot:
    routed = {r.id for r in reps if r.role == "active"} if routed is None else routed
    return Snapshot(now=now, replicas=tuple(reps), gpus=GpuView(topo), routed=frozenset(routed))


def steady(cfg: FleetConfig, **desired: int) -> dict[str, PoolState]:
    out = {}
    for p in cfg.pools:
        n = desired.get(p.name.replace("-", "_"), p.min_replicas)
        st = PolicyState(desired=n, changes=((0.0, n),), recommendations=((NOW - 10, n),))
        out[p.name] = PoolState(policy=st, decision=Decision(n, 0, False, "steady", st))
    return out


def kinds(out, kind: str) -> list[tuple[str | None, str]]:
    return [(a.replica, a.pool) for a in out.actions if a.kind == kind]


def events(out, kind: str) -> list[dict[str, Any]]:
    return [dict(e.detail, pool=e.pool) for e in out.events if e.kind == kind]


# ---- priorities and reclaim ------------------------------------------------------------------


def test_a_higher_priority_pool_takes_a_lower_pools_warm_replica_before_any_active_one():
    cfg = fleet(pool("low", priority=0, warm_pool={"min": 1, "max": 1}), pool("high", priority=10))
    low_a = rep(cfg, "la", "low", gpus=("vslot0",))
    low_w = rep(cfg, "lw", "low", "warm", gpus=("vslot1",))
    high = rep(cfg, "h1", "high", gpus=("vslot2",), load=8)  # 8 running / 4 per replica: wants 2
    out = reconcile(cfg, snap(slots(3), low_a, low_w, high), steady(cfg, high=1), NOW)
    assert kinds(out, "stop") == [("lw", "low")]
    assert not kinds(out, "drain"), "a warm replica was enough: no serving replica is touched"
    (ev,) = events(out, "reclaim")
    assert ev["pool"] == "high" and ev["from_pool"] == "low" and ev["for_pool"] == "high" and ev["how"] == "stop"
    assert set(out.states["high"].claims) == {"lw"} and out.states["high"].unmet == 1


def test_an_active_replica_above_the_lower_pools_minimum_is_drained_never_stopped_and_never_below_its_minimum():
    cfg = fleet(pool("low", priority=0, min_replicas=1), pool("high", priority=10))
    la, lb = rep(cfg, "la", "low", gpus=("vslot0",)), rep(cfg, "lb", "low", gpus=("vslot1",), load=1)
    high = rep(cfg, "h1", "high", gpus=("vslot2",), load=16)  # wants 4: three more than it has
    out = reconcile(cfg, snap(slots(3), la, lb, high), steady(cfg, low=2, high=1), NOW)
    assert kinds(out, "drain") == [("la", "low")], "the least loaded, by drain"
    assert not kinds(out, "stop")
    assert "la:8000" not in out.routes[0].servers and "lb:8000" in out.routes[0].servers
    assert out.states["high"].unmet == 3, "one start waits for la's GPU, two have nothing left to take"
    assert "waiting for GPUs reclaimed from la" in (out.states["high"].no_capacity or "")
    assert "low" in {e["from_pool"] for e in events(out, "reclaim")}


def test_a_claim_in_flight_is_not_claimed_again_and_the_drained_victim_is_stopped_not_kept_warm():
    cfg = fleet(pool("low", priority=0, min_replicas=1, warm_pool={"min": 1, "max": 1}), pool("high", priority=10))
    la, lb = rep(cfg, "la", "low", gpus=("vslot0",)), rep(cfg, "lb", "low", gpus=("vslot1",))
    high = rep(cfg, "h1", "high", gpus=("vslot2",), load=8)
    states = steady(cfg, low=2, high=1)
    one = reconcile(cfg, snap(slots(3), la, lb, high), states, NOW)
    assert kinds(one, "drain") == [("la", "low")]
    # next tick: la drains (unrouted, still busy): nothing more is taken
    busy = with_load(la, 2, role="draining")
    two = reconcile(cfg, snap(slots(3), busy, lb, high, routed={"lb", "h1"}, now=NOW + 1), one.states, NOW + 1)
    assert not kinds(two, "drain") and not kinds(two, "stop") and not events(two, "reclaim")
    assert set(two.states["high"].claims) == {"la"}
    # la is empty: stopped (its pool wants a warm replica, but these GPUs are promised)
    empty = with_load(la, 0, role="draining")
    three = reconcile(cfg, snap(slots(3), empty, lb, high, routed={"lb", "h1"}, now=NOW + 3), two.states, NOW + 3)
    assert kinds(three, "stop") == [("la", "low")] and not kinds(three, "demote")
    assert "its GPUs go to pool high" in next(a.reason for a in three.actions if a.kind == "stop")


def test_after_a_restart_the_claim_comes_back_from_the_runtime_not_from_memory():
    """The pool states are gone (a restarted autoscaler): the victim's role says whom it drains for."""
    cfg = fleet(pool("low", priority=0, min_replicas=1, warm_pool={"min": 1, "max": 1}), pool("high", priority=10))
    victim = rep(cfg, "la", "low", "draining", gpus=("vslot0",), load=2, claimed_for="high")
    lb, high = rep(cfg, "lb", "low", gpus=("vslot1",)), rep(cfg, "h1", "high", gpus=("vslot2",), load=8)
    one = reconcile(cfg, snap(slots(3), victim, lb, high, routed={"lb", "h1"}), {}, NOW)
    assert not events(one, "reclaim"), "no second victim: the one in flight is known"
    assert set(one.states["high"].claims) == {"la"} and one.states["high"].unmet >= 1
    empty = with_load(victim, 0)
    two = reconcile(cfg, snap(slots(3), empty, lb, high, routed={"lb", "h1"}, now=NOW + 2), one.states, NOW + 2)
    assert kinds(two, "stop") == [("la", "low")] and not kinds(two, "demote"), "stopped, not kept warm"


def test_a_reclaim_drain_carries_the_pool_it_is_for_to_the_runtime():
    cfg = fleet(pool("low", priority=0, min_replicas=1), pool("high", priority=10))
    la, lb = rep(cfg, "la", "low", gpus=("vslot0",)), rep(cfg, "lb", "low", gpus=("vslot1",), load=1)
    out = reconcile(cfg, snap(slots(3), la, lb, rep(cfg, "h1", "high", gpus=("vslot2",), load=8)),
                    steady(cfg, low=2, high=1), NOW)
    (drain,) = [a for a in out.actions if a.kind == "drain"]
    assert (drain.replica, drain.claimed_for) == ("la", "high")


def test_docker_keeps_the_claim_in_the_container_name_and_reads_it_back():
    from autoscaler.runtime.docker import container_name, parse_claim, parse_role

    name = container_name("gpufleet", "low", "r-low-1", "draining", "draining", "high-prio")
    assert name == "gpufleet-r-low-1--draining.for-high-prio"
    assert parse_role("/" + name) == ("draining", "draining") and parse_claim("/" + name) == "high-prio"
    plain = container_name("gpufleet", "low", "r-low-1", "draining", "draining")
    assert parse_role(plain) == ("draining", "draining") and parse_claim(plain) is None
    assert container_name("gpufleet", "low", "r-low-1", "active", "active", "high") == "gpufleet-r-low-1--active"


def test_the_local_runtime_keeps_the_claim_in_its_state_file(tmp_path):
    import json

    from autoscaler.runtime.local import LocalRuntime

    rt = LocalRuntime(tmp_path)
    (tmp_path / "r-low-1.json").write_text(json.dumps({
        "id": "r-low-1", "pool": "low", "model": "m", "role": "active", "target_role": "active",
        "host": "127.0.0.1", "port": 1, "gpus": ["vslot0"], "config_hash": "x", "created_at": 1.0, "pid": None}))
    rt.set_role("r-low-1", "draining", claimed_for="high")
    assert [(r.role, r.claimed_for) for r in rt.list()] == [("draining", "high")]
    rt.set_role("r-low-1", "warm")
    assert [(r.role, r.claimed_for) for r in rt.list()] == [("warm", None)]


def test_freed_gpus_go_to_the_pool_that_claimed_them_not_to_a_pool_listed_first():
    # low is listed first and wants a replica too; the claim keeps vslot0 for high
    cfg = fleet(pool("low", priority=0, min_replicas=1), pool("high", priority=10))
    lb = rep(cfg, "lb", "low", gpus=("vslot1",), load=8)
    high = rep(cfg, "h1", "high", gpus=("vslot2",), load=8)
    states = steady(cfg, low=2, high=2)
    from autoscaler.loop.arbiter import Claim

    states["high"] = replace(states["high"], claims={"la": Claim("la", "low", ("vslot0",), "reclaim", NOW - 5)})
    out = reconcile(cfg, snap(slots(3), lb, high), states, NOW)  # la is gone
    starts = [a for a in out.actions if a.kind == "start"]
    assert [(a.pool, a.spec.gpus) for a in starts] == [("high", ("vslot0",))]
    assert out.states["low"].unmet >= 1 and not out.states["high"].claims, "placed: the claim is spent"


def test_a_replica_still_loading_does_not_count_toward_the_minimum_a_pool_keeps_serving():
    # found by the property test below: low's only serving replica was drained while its 2nd still loaded
    cfg = fleet(pool("low", priority=0, min_replicas=1), pool("high", priority=10, min_replicas=0))
    serving = rep(cfg, "la", "low", gpus=("vslot0",), load=2)
    loading = rep(cfg, "lb", "low", "starting", target="active", gpus=("vslot1",))
    st = steady(cfg, low=2, high=1)
    out = reconcile(cfg, snap(slots(2), serving, loading), st, NOW)
    assert not kinds(out, "drain") and out.states["high"].unmet == 1
    # once the second one serves, one of them may go (the empty one: cheapest to drain)
    out = reconcile(cfg, snap(slots(2), serving, replace(loading, role="active", ready=True)), st, NOW)
    assert kinds(out, "drain") == [("lb", "low")]


def test_a_lower_priority_pool_never_takes_from_a_higher_one_above_its_own_minimum():
    cfg = fleet(pool("low", priority=0, min_replicas=1), pool("high", priority=10, min_replicas=1))
    la = rep(cfg, "la", "low", gpus=("vslot0",), load=16)
    ha, hb = rep(cfg, "ha", "high", gpus=("vslot1",)), rep(cfg, "hb", "high", gpus=("vslot2",))
    out = reconcile(cfg, snap(slots(3), la, ha, hb), steady(cfg, low=1, high=2), NOW)
    assert not kinds(out, "drain") and not kinds(out, "stop") and not events(out, "reclaim")
    assert out.states["low"].unmet == 3 and "no free GPUs" in (out.states["low"].no_capacity or "")


def test_the_minimum_is_guaranteed_a_pool_below_it_takes_from_a_higher_pool_above_its_own():
    cfg = fleet(pool("low", priority=0, min_replicas=1), pool("high", priority=10, min_replicas=1))
    ha, hb = rep(cfg, "ha", "high", gpus=("vslot0",)), rep(cfg, "hb", "high", gpus=("vslot1",), load=1)
    out = reconcile(cfg, snap(slots(2), ha, hb), steady(cfg, low=1, high=2), NOW)  # low has nothing
    assert kinds(out, "drain") == [("ha", "high")]
    (ev,) = events(out, "reclaim")
    assert ev["from_pool"] == "high" and ev["for_pool"] == "low"
    # the guarantee does not reach below the other pool's minimum
    out = reconcile(cfg, snap(slots(1), replace(ha, gpus=("vslot0",))), steady(cfg, low=1, high=1), NOW)
    assert not kinds(out, "drain") and out.states["low"].unmet == 1


def test_equal_priorities_share_by_demand_and_do_not_take_back_and_forth():
    cfg = fleet(pool("a"), pool("b"))
    b_reps = [rep(cfg, f"b{i}", "b", gpus=(f"vslot{i}",), load=1) for i in range(3)]
    a1 = rep(cfg, "a1", "a", gpus=("vslot3",), load=16)  # a wants 4, has 1; b wants 3, has 3
    out = reconcile(cfg, snap(slots(4), a1, *b_reps), steady(cfg, a=1, b=3), NOW)
    assert len(kinds(out, "drain")) == 1, "a 2/4 share is no larger than b's 2/3: one, not more"
    assert out.states["a"].unmet == 3
    # b, now below its demand, does not take it back from a (a's share 2/4 is not larger than b's)
    drained = kinds(out, "drain")[0][0]
    left = [r for r in b_reps if r.id != drained]
    a2 = rep(cfg, "a2", "a", gpus=(next(r.gpus for r in b_reps if r.id == drained)), load=4)
    loaded = [with_load(r, 8.0) for r in left]
    out2 = reconcile(cfg, snap(slots(4), a1, a2, *loaded), steady(cfg, a=4, b=3), NOW)
    assert not kinds(out2, "drain") and not events(out2, "reclaim")


def test_warm_replicas_of_an_equal_priority_pool_are_fair_game_but_a_warm_refill_never_reclaims():
    cfg = fleet(pool("a"), pool("b", warm_pool={"min": 1, "max": 1}))
    a1 = rep(cfg, "a1", "a", gpus=("vslot0",), load=8)
    b1, bw = rep(cfg, "b1", "b", gpus=("vslot1",)), rep(cfg, "bw", "b", "warm", gpus=("vslot2",))
    out = reconcile(cfg, snap(slots(3), a1, b1, bw), steady(cfg, a=1, b=1), NOW)
    assert kinds(out, "stop") == [("bw", "b")]
    # b's warm refill, with no free GPU, only reports it
    out2 = reconcile(cfg, snap(slots(3), a1, rep(cfg, "a2", "a", gpus=("vslot2",)), b1), out.states, NOW + 1)
    assert not kinds(out2, "drain") and not kinds(out2, "stop")
    assert "warm replica" in (out2.states["b"].no_capacity or "")


# ---- placement across pools and fragmentation -------------------------------------------------


def test_a_one_gpu_replica_of_one_pool_keeps_off_the_nvlink_pair_another_pools_two_gpu_replica_needs():
    topo = load_topology_file(A100_PAIR)
    cfg = fleet(pool("small"), pool("large", gpus_per_replica=2, gpu_min_link="NVLINK", min_replicas=0))
    assert fleet_sizes(cfg) == (2,)
    out = reconcile(cfg, snap(topo), steady(cfg, small=1, large=0), NOW)
    (start,) = [a for a in out.actions if a.kind == "start"]
    assert start.pool == "small" and start.spec.gpus[0] in ("GPU2", "GPU3")


def test_fragmentation_is_undone_by_moving_a_small_replica_replacement_first_then_drain():
    topo = load_topology_file(A100_PAIR)
    cfg = fleet(pool("small", priority=0), pool("batch", priority=0),
                pool("large", priority=10, gpus_per_replica=2, gpu_min_link="NVLINK", min_replicas=1))
    s1 = rep(cfg, "s1", "small", gpus=("GPU0",))  # sits in the only NVLink pair
    b1 = rep(cfg, "b1", "batch", gpus=("GPU2",))
    states = steady(cfg, small=1, batch=1, large=1)
    one = reconcile(cfg, snap(topo, s1, b1), states, NOW)
    (mv,) = events(one, "move")
    assert mv["replica"] == "s1" and mv["from_pool"] == "small" and mv["how"] == "move"
    # the replacement starts first, outside the pair; s1 still serves
    starts = [(a.pool, a.spec.gpus) for a in one.actions if a.kind == "start"]
    assert starts == [("small", ("GPU3",))]
    assert not kinds(one, "drain") and "s1:8000" in next(r for r in one.routes if r.name == "small").servers
    # the replacement serves: now s1 drains
    s2 = rep(cfg, "s2x", "small", gpus=("GPU3",))
    two = reconcile(cfg, snap(topo, s1, b1, s2, now=NOW + 5), one.states, NOW + 5)
    assert kinds(two, "drain") == [("s1", "small")]
    # drained: stopped (not kept warm); then the pair is free and large places on it
    draining = replace(s1, role="draining")
    unrouted = reconcile(cfg, snap(topo, draining, b1, s2, routed={"b1", "s2x"}, now=NOW + 7), two.states, NOW + 7)
    assert not kinds(unrouted, "stop"), "a drain counts from when nginx stopped routing to it"
    three = reconcile(cfg, snap(topo, draining, b1, s2, routed={"b1", "s2x"}, now=NOW + 8), unrouted.states, NOW + 8)
    assert kinds(three, "stop") == [("s1", "small")]
    four = reconcile(cfg, snap(topo, b1, s2, now=NOW + 9), three.states, NOW + 9)
    assert [(a.pool, a.spec.gpus) for a in four.actions if a.kind == "start"] == [("large", ("GPU0", "GPU1"))]
    assert not any(r.pool != "large" and a.kind in ("drain", "stop") for a in four.actions
                   for r in (s2, b1) if a.replica == r.id)


def test_no_move_when_the_moved_replica_would_have_nowhere_to_go():
    topo = load_topology_file(A100_PAIR)
    cfg = fleet(pool("small", priority=0, min_replicas=1),
                pool("large", priority=10, gpus_per_replica=2, gpu_min_link="NVLINK", min_replicas=1))
    reps = [rep(cfg, "s1", "small", gpus=("GPU0",)), rep(cfg, "s2", "small", gpus=("GPU2",), load=3),
            rep(cfg, "s3", "small", gpus=("GPU3",), load=3)]
    out = reconcile(cfg, snap(topo, *reps), steady(cfg, small=3, large=1), NOW)
    assert not events(out, "move")
    # ...so a reclaim by drain it is: s1 frees the pair (GPU1 is free)
    assert kinds(out, "drain") == [("s1", "small")]


# ---- saturation --------------------------------------------------------------------------------


def sig(waiting: float, ready: int = 2) -> tuple[float, int]:
    """(waiting requests, serving replicas): what saturation reads of a pool's signals."""
    return waiting, ready


def test_saturation_starts_at_the_threshold_and_ends_below_clear_after_the_hold():
    sat = fleet(pool("a", fallback=["b"], saturation={"waiting_per_replica": 4, "hold_s": 5}), pool("b")).pool("a")
    s = sat.saturation
    st = next_saturation(s, *sig(7), SaturationState(), NOW)
    assert not st.saturated
    st = next_saturation(s, *sig(8), st, NOW)
    assert st.saturated and st.since == NOW
    assert next_saturation(s, *sig(1), st, NOW + 2).saturated, "held for hold_s"
    assert next_saturation(s, *sig(5), st, NOW + 9).saturated, "still above clear_below (2 per replica)"
    assert not next_saturation(s, *sig(3), st, NOW + 9).saturated
    assert not next_saturation(s, *sig(0, ready=0), st, NOW + 1).saturated, "no replica: plain fallback"


def test_reconcile_reports_saturation_and_an_overflow_event():
    cfg = fleet(pool("a", fallback=[{"pool": "b", "max_tokens": 64}], saturation={"waiting_per_replica": 2}),
                pool("b"))
    a1 = rep(cfg, "a1", "a", samples=(ReplicaSample(t=NOW - 0.1, running=4, waiting=5, kv_usage=0.5,
                                                      ttft_buckets=(), requests_total=0.0),))
    out = reconcile(cfg, snap(slots(4), a1, rep(cfg, "b1", "b")), steady(cfg), NOW)
    assert out.saturated == {"a": True, "b": False}
    (ev,) = events(out, "overflow")
    assert ev["to"] == ["b"] and ev["waiting_per_replica"] == 5.0


# ---- properties, over random fleets and traffic in the simulator (the same reconcile) ----------

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from autoscaler.scaletest.loadgen import constant_rate  # noqa: E402
from autoscaler.sim.run import simulate  # noqa: E402


@st.composite
def fleets_and_traffic(draw: st.DrawFn) -> tuple[FleetConfig, dict]:
    n = draw(st.integers(2, 3))
    quick = {"profile": "tiny", "load_time_s": 2.0, "max_num_seqs": 2}
    ps, traffic, room = [], {}, 8
    for i in range(n):
        k = draw(st.sampled_from([1, 1, 2]))
        mn = draw(st.integers(0 if i else 1, 1))
        room -= mn * k
        p = {"name": f"p{i}", "model": f"m{i}", "gpus_per_replica": k, "priority": draw(st.sampled_from([0, 5, 10])),
             "min_replicas": mn, "max_replicas": draw(st.integers(max(mn, 1), 4)), "sim": quick,
             "warm_pool": {"min": 0, "max": draw(st.integers(0, 1))}, "targets": {"concurrency": 2},
             "scale_to_zero_after_s": 20, "hold_timeout_s": 240,
             "behavior": {"scale_down": {"stabilization_s": draw(st.sampled_from([5, 30]))}}}
        if k == 2 and draw(st.booleans()):
            p["gpu_min_link"] = "NVLINK"
        ps.append(p)
        # ~1 s requests, windows that mostly overlap: pools compete for the host's 4 GPUs
        start, length = draw(st.integers(0, 30)), draw(st.integers(20, 90))
        traffic[p["name"]] = constant_rate(draw(st.sampled_from([2.0, 6.0, 10.0])), start, start + length,
                                           max_tokens=40)
    if room < 0:
        for p in ps:
            p["min_replicas"] = 0 if p["name"] != "p0" else 1
    topo = str(TOPO / "dell-c4140-4xv100-sxm2-nv2-mesh.txt") if draw(st.booleans()) else str(A100_PAIR)
    cfg = parse_config({"gpus": {"source": "topology", "topology_file": topo}, "pools": ps})
    return cfg, traffic


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets_and_traffic())
def test_pools_sharing_gpus_never_double_assign_never_go_below_minimum_and_cut_no_request(case):
    cfg, traffic = case
    try:
        sim = simulate(cfg, [], by_pool=traffic, duration_s=150)
    except ValueError as e:  # the minimums do not fit this host: refused up front, as configured
        assert "do not fit" in str(e)
        event("refused: minimums do not fit")
        return
    event(f"reclaims: {min(sum(1 for e in sim.events if e['kind'] == 'reclaim'), 3)}")
    for t, status in sim.timeline:
        held: dict[str, str] = {}
        for name, pool_status in status["pools"].items():
            reps = pool_status["replicas"]
            serving = sum(1 for r in reps if r["role"] == "active" and r["ready"])
            assert serving >= cfg.pool(name).min_replicas, (t, name, reps)
            for r in reps:
                for g in r["gpus"]:
                    assert g not in held, f"t={t}: {g} held by {held[g]} and {r['id']}"
                    held[g] = r["id"]
    stops = [e for e in sim.events if e["kind"] == "stop"]
    assert not [e for e in stops if e.get("role") == "active"], "a serving replica is drained, never stopped"
    cut = [r for r in sim.results if r.error and "cut" in r.error]
    if cut:  # only a drain that ran out its drain_timeout_s cuts what is left (hopeless overload)
        assert any(e["reason"].startswith("drain timeout") for e in stops), cut[:3]
    for e in sim.events:
        if e["kind"] == "reclaim":
            assert e["from_pool"] != e["pool"]

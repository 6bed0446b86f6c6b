"""The Actuator: one apply order and the failure rules in one place, for the live loop and the simulator.

Driven here inline (the simulator's executor) on an in-memory runtime whose calls can be made to fail; the
live executor runs the same code in threads (tests/integration, tests/e2e)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from autoscaler.gateway.render import PoolRoute
from autoscaler.loop.actions import Action
from autoscaler.loop.actuate import Actuator, InlineExecutor, run_inline
from autoscaler.loop.record import Recorder
from autoscaler.loop.snapshot import PoolState, Reconciled
from autoscaler.runtime.base import Replica, ReplicaSpec, Role

NOW = 50.0


@dataclass
class Runtime:
    """In memory; `refuse` names the calls that raise (what a Docker daemon error looks like)."""

    name: str = "memory"
    roles: dict[str, Role] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)

    def list(self) -> list[Replica]:
        return []

    def create(self, spec: ReplicaSpec) -> Replica:
        self.calls.append(f"create {spec.target_role}")
        if "create" in self.refuse:
            raise RuntimeError("no such image")
        rid = f"r{len(self.roles) + 1}"
        self.roles[rid] = "starting"
        return Replica(rid, spec.pool, spec.model, "starting", spec.target_role, "", "", spec.gpus, "", NOW, True)

    def set_role(self, replica_id: str, role: Role, target_role: Role | None = None,
                 claimed_for: str | None = None) -> None:
        self.calls.append(f"set_role {replica_id} {role}")
        if replica_id in self.refuse:
            raise RuntimeError(f"{replica_id}: conflict")
        self.roles[replica_id] = role

    def remove(self, replica_id: str) -> None:
        self.calls.append(f"remove {replica_id}")
        self.removed.append(replica_id)


@dataclass
class Gateway:
    updates: list[tuple[PoolRoute, ...]] = field(default_factory=list)
    states: list[dict[str, bool]] = field(default_factory=list)

    async def update(self, routes, tag=None) -> bool:
        self.updates.append(tuple(routes))
        return True

    def publish_state(self, saturated, now) -> None:
        self.states.append(dict(saturated))


def spec(role: Role = "active") -> ReplicaSpec:
    return ReplicaSpec(pool="a", model="m", argv=(), config_hash="h", target_role=role, gpus=("vslot0",))


def route(name: str, *ids: str) -> PoolRoute:
    return PoolRoute(name, "m", tuple(f"{i}:8000" for i in ids), (), ids)


def out(*actions: Action, routes: tuple[PoolRoute, ...] = ()) -> Reconciled:
    return Reconciled(tuple(actions), {"a": PoolState(), "b": PoolState()}, routes,
                      frozenset(i for r in routes for i in r.replica_ids))


def actuator(rt: Runtime, gw: Gateway, published: list | None = None) -> tuple[Actuator, Recorder]:
    rec = Recorder(lambda: NOW)
    return Actuator(rt, gw, rec, InlineExecutor(), lambda: NOW,
                    publish_routes=None if published is None else published.append), rec


def test_one_order_role_changes_then_the_activator_then_the_gateway_then_starts():
    rt, gw, published = Runtime(), Gateway(), []
    act, rec = actuator(rt, gw, published)
    applied = run_inline(act.apply(out(
        Action("start", "a", role="active", spec=spec()),
        Action("activate", "a", "w1", role="active"),
        Action("stop", "a", "old", detail={"role": "warm"}),
        routes=(route("a", "w1"), route("b")))))
    # in the actions' order, the start (listed first) last: it is the slow part
    assert rt.calls == ["set_role w1 active", "remove old", "create active"]
    assert published == [applied.routes] and gw.updates == [applied.routes]
    assert applied.route_ids == {"w1"}
    kinds = [e["kind"] for e in rec.events]
    assert kinds == ["activate", "stop", "start"]
    assert not act.busy, "the inline stop has finished"


def test_a_failed_role_change_keeps_that_pool_s_routes_and_not_the_others():
    rt, gw = Runtime(refuse={"w2"}), Gateway()
    act, rec = actuator(rt, gw)
    run_inline(act.apply(out(routes=(route("a", "r1"), route("b", "r9")))))
    applied = run_inline(act.apply(out(Action("activate", "a", "w2", role="active"),
                                       Action("activate", "b", "w3", role="active"),
                                       routes=(route("a", "r1", "w2"), route("b", "r9", "w3")))))
    assert applied.routes == (route("a", "r1"), route("b", "r9", "w3"))
    assert [e for e in rec.events if e["kind"] == "role_change_failed"][0]["replica"] == "w2"
    assert rt.roles["w3"] == "active"


def test_a_refused_start_is_told_to_the_next_snapshot_once():
    rt, gw = Runtime(refuse={"create"}), Gateway()
    act, rec = actuator(rt, gw)
    run_inline(act.apply(out(Action("start", "a", role="warm", spec=spec("warm")))))
    failures = act.take_start_failures()
    assert [(f.pool, f.target) for f in failures] == [("a", "warm")] and "no such image" in failures[0].reason
    assert act.take_start_failures() == ()
    assert not [e for e in rec.events if e["kind"] == "start"]


def test_a_stop_that_fails_is_retried_by_the_next_tick_not_lost():
    class Stuck(Runtime):
        def remove(self, replica_id: str) -> None:
            raise RuntimeError("daemon timeout")

    rt = Stuck()
    act, rec = actuator(rt, Gateway())
    run_inline(act.apply(out(Action("stop", "a", "r1"))))
    assert not act.busy, "not busy: the next observe sees it alive and reconcile stops it again"
    assert [e["kind"] for e in rec.events] == ["stop"]


def test_the_inline_driver_refuses_a_step_that_waits_for_something_real():
    class Suspends:  # what awaiting a real thread or socket does: give control back to a loop
        def __await__(self):
            yield

    async def waits() -> None:
        await Suspends()

    with pytest.raises(RuntimeError, match="waited"):
        run_inline(waits())


def test_the_simulator_applies_every_tick_through_the_live_actuator(monkeypatch):
    from autoscaler.loop import actuate
    from autoscaler.sim.run import simulate
    from tests.unit.test_simulator import BURST, fleet

    applied: list[float] = []
    real = actuate.Actuator.apply

    async def counting(self, out):
        applied.append(self.clock())
        return await real(self, out)

    monkeypatch.setattr(actuate.Actuator, "apply", counting)
    sim = simulate(fleet(), BURST, duration_s=90)
    ticks = [t for t, _ in sim.timeline]
    assert set(ticks) <= set(applied) and len(applied) >= len(ticks) > 80
    assert any(e["kind"] == "start" for e in sim.events)


def test_the_live_recorder_writes_each_event_to_the_log_the_simulator_s_does_not(caplog):
    import logging

    live = Recorder(lambda: NOW, log=logging.getLogger("gpufleet.test"))
    sim = Recorder(lambda: NOW)
    with caplog.at_level(logging.INFO, logger="gpufleet.test"):
        for rec in (live, sim):
            run_inline(Actuator(Runtime(), Gateway(), rec, InlineExecutor(), lambda: NOW).apply(
                out(Action("activate", "a", "w1", role="active"))))
    assert [r.getMessage() for r in caplog.records] == ["activate a {'replica': 'w1', 'reason': ''}"]
    assert len(live.events) == len(sim.events) == 1

"""One control-loop tick as one pure step.

    reconcile(config, snapshot, states, now) -> Reconciled(actions, states, routes, events)

The controller observes the fleet once into an immutable `Snapshot` (replicas
with their roles, health and recent metric samples; what nginx has loaded; the
GPUs), calls this, and applies the actions in order. No I/O, no clock reads,
no globals: the live loop, the unit tests and the simulator run this same code.

What a tick decides, in order (each rule is one block below):
1. evict: a replica whose process/container exited, or that failed its health
   checks `unhealthy_after` times in a row, is stopped; an exit the loop did
   not ask for is a crash and puts the pool's starts into exponential backoff,
   and so does a start not ready within the engine's `start_timeout_s`;
   two live replicas holding one GPU (left by a crash elsewhere) keep the
   serving one;
2. promote: a loading replica whose readiness probe (its engine's own: vLLM's
   /health, llama.cpp's /health, ...) answered 200 becomes what it was
   started for (active or warm);
3. finish drains: a draining replica is empty (or timed out) counting only from
   when nginx stopped routing to it; then it is demoted to warm if the pool
   wants one, else stopped;
4. per pool, highest priority first: the signals of its routed replicas → the
   policy → the planner's actions (activate warm first, retarget loading
   replicas, cold-start the rest, drain the surplus, trim the warm pool), with
   GPUs placed for each start by the topology-aware allocator; a start that
   finds no GPU asks the arbiter (autoscaler.loop.arbiter) for other pools'
   replicas: claimed GPUs are reserved for the pool that claimed them, and a
   claimed replica is stopped, not kept warm, once drained; whether the pool
   is saturated (its requests overflow to its fallbacks at the gateway);
5. routes: which replicas nginx should route to, newest-activated first.

An exception in one pool's step is an event on that pool (its state and
replicas stay as they were); the other pools go on.

A replica with a removal in flight (`stopping`) takes part in nothing but
still holds its GPUs: they are not handed out until it is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from autoscaler.config import FleetConfig, PoolConfig
from autoscaler.engines import resolve
from autoscaler.gateway.render import PoolRoute
from autoscaler.gateway.routing import next_saturation
from autoscaler.gpus.slots import Placement
from autoscaler.loop.actions import Action, Event
from autoscaler.loop.arbiter import Candidate, Claim, ClaimKind, PoolShare, find_move, find_reclaim
from autoscaler.loop.lifecycle import fleet_sizes, note_crash, place_replica, replica_spec
from autoscaler.loop.planner import ReplicaView, drain_finished, plan
from autoscaler.loop.policy import Decision, PolicyState, PoolView, decide
from autoscaler.loop.signals import PoolSignals, pool_signals
from autoscaler.loop.snapshot import PoolState, Reconciled, ReplicaObs, Snapshot
from autoscaler.runtime.base import Role

HISTORY_S = 120.0  # pool signal history kept for the policy (≥ its longest metric window)
CLAIM_MAX_S = 900.0  # a claim on another pool's GPUs not satisfied by then is dropped (and may be made again)

# decide(pool, signals, view, state, now) -> Decision: gpufleet's policy, or a baseline's.
Policy = Callable[[PoolConfig, Sequence[PoolSignals], PoolView, Any, float], Decision[Any]]


def _view(r: ReplicaObs) -> ReplicaView:
    return ReplicaView(r.id, r.role, r.target_role, r.ready, r.load, r.created_at, r.role_since, r.sleeping)


def reconcile(
    cfg: FleetConfig,
    snap: Snapshot,
    states: Mapping[str, PoolState],
    now: float,
    policy: Policy = decide,
    initial_state: Callable[[PoolConfig, int], Any] | None = None,
) -> Reconciled:
    """The whole decision of one tick; see the module docstring for the rules.

    policy / initial_state: gpufleet's `decide` by default; the simulator passes a
    baseline's (its state starts from initial_state(pool, routed replicas)).
    """
    acts: list[Action] = []
    events: list[Event] = []
    live: dict[str, ReplicaObs] = {r.id: r for r in snap.replicas if not r.stopping}
    work: dict[str, PoolState] = {p.name: states.get(p.name, PoolState()) for p in cfg.pools}
    pools = {p.name: p for p in cfg.pools}

    def change(r: ReplicaObs, role: Role, target: Role | None = None) -> None:
        live[r.id] = replace(r, role=role, target_role=target or role, role_since=now)

    def stop(r: ReplicaObs, why: str) -> None:
        acts.append(Action("stop", r.pool, r.id, reason=why, detail={"role": r.role}))
        del live[r.id]

    # 1. Starts the runtime refused, dead or failing replicas go first, so that the policy sees the truth.
    for f in snap.start_failures:
        if (p := pools.get(f.pool)) is None:
            continue
        st = note_crash(p, work[p.name], now, f"start failed: {f.reason}")
        work[p.name] = st
        events.append(Event("start_failed", p.name, {
            "target": f.target, "reason": f.reason, "crashes": st.crashes,
            "backoff_s": round(max(st.backoff_until - now, 0.0), 3)}))
    for r in list(live.values()):
        if not r.alive:
            stop(r, "process/container exited")
            p = pools.get(r.pool)
            if p is not None:
                st = note_crash(p, work[p.name], now, f"replica {r.id} exited ({r.role})")
                work[p.name] = st
                events.append(Event("crash", p.name, {
                    "replica": r.id, "role": r.role, "crashes": st.crashes,
                    "backoff_s": round(st.backoff_until - now, 3)}))
        elif r.role != "starting" and r.failures >= cfg.unhealthy_after:
            stop(r, f"failed {r.failures} health checks: {r.last_error}")
        elif r.role == "starting" and not r.ready and (p := pools.get(r.pool)) is not None and (
                now - r.created_at > (limit := resolve(p).start_timeout_s)):
            # a replica that never becomes ready would hold its GPUs for ever: a failed start
            stop(r, f"not ready {limit:g} s after its start (start_timeout_s): {r.last_error or 'no answer'}")
            st = note_crash(p, work[p.name], now, f"replica {r.id} not ready within {limit:g} s")
            work[p.name] = st
            events.append(Event("start_timeout", p.name, {
                "replica": r.id, "start_timeout_s": limit, "gpus": list(r.gpus), "crashes": st.crashes,
                "backoff_s": round(st.backoff_until - now, 3), "last_error": r.last_error}))
    # A GPU with two live holders (a crash between a stop and its removal, elsewhere): keep the one that
    # serves, retire the others, instead of stalling on it.
    holders: dict[str, list[ReplicaObs]] = {}
    for r in live.values():
        for g in r.gpus:
            holders.setdefault(g, []).append(r)
    for g, rs in sorted(holders.items()):
        rs = [r for r in rs if r.id in live]
        if len(rs) < 2:
            continue
        rs.sort(key=lambda r: (r.id not in snap.routed, r.role != "active", not r.ready, r.role == "starting",
                               r.created_at, r.id))
        for r in rs[1:]:
            stop(r, f"GPU {g} is also held by {rs[0].id}, which serves")
    # 2. Promotions.
    for r in list(live.values()):
        if r.role == "starting" and r.ready:
            acts.append(Action("promote", r.pool, r.id, role=r.target_role, reason="ready",
                               detail={"load_s": round(now - r.created_at, 3)}))
            change(r, r.target_role)

    # Claims on GPUs are fleet-wide: victim id → (the pool it gives its GPUs to, the claim).
    claims: dict[str, tuple[str, Claim]] = {}
    for p in cfg.pools:
        for vid, c in work[p.name].claims.items():
            if now - c.since < CLAIM_MAX_S:
                claims[vid] = (p.name, c)
    # ...and those the runtime remembers (a restart lost the pool states): a replica draining for a pool
    for r in live.values():
        if r.role == "draining" and r.claimed_for in pools and r.id not in claims:
            claims[r.id] = (r.claimed_for, Claim(r.id, r.pool, r.gpus, "reclaim", now))

    # 3. Drains that are done: demote to warm if the pool wants one, else stop. A drain counts from the
    # moment nginx no longer routes to the replica: until then, empty is not drained. A replica whose GPUs
    # another pool claimed is stopped.
    settle = max(1.0, cfg.tick_s)
    for p in cfg.pools:
        st = work[p.name]
        want_warm = st.decision.desired_warm if st.decision else 0
        warm_now = sum(1 for r in live.values() if r.pool == p.name and r.role == "warm")
        unrouted: dict[str, float] = {}
        for r in sorted((r for r in live.values() if r.pool == p.name and r.role == "draining"),
                        key=lambda r: r.role_since):
            if snap.gateway_pending or r.id in snap.routed:
                continue
            since = unrouted[r.id] = st.unrouted_since.get(r.id, now)
            why = drain_finished(replace(_view(r), role_since=since), now, p.drain_timeout_s, settle)
            if why is None:
                continue
            del unrouted[r.id]
            if r.id in claims:
                stop(r, f"{why}; its GPUs go to pool {claims[r.id][0]}")
            elif warm_now < want_warm and r.ready and r.config_hash == p.config_hash():
                acts.append(Action("demote", p.name, r.id, role="warm", reason=why))
                change(r, "warm")
                warm_now += 1
            else:
                stop(r, why)
        work[p.name] = replace(st, unrouted_since=unrouted)

    # 4. The policy and the plan, pool by pool, highest priority first (it places first); GPUs held by
    # anything observed stay held.
    tick = _Tick(cfg, snap, now, live, dict(work), claims, {g for r in snap.replicas for g in r.gpus},
                 fleet_sizes(cfg))
    new_states = dict(states)
    for p in sorted(cfg.pools, key=lambda p: -p.priority):
        try:
            st, pool_acts, pool_events = _pool_step(tick, p, work[p.name], policy, initial_state)
        except Exception as e:  # a bug or garbage in one pool must not stop the others
            why = f"{type(e).__name__}: {e}"
            new_states[p.name] = replace(work[p.name], error=why)
            if why != work[p.name].error:
                events.append(Event("pool_error", p.name, {"reason": why}))
            continue
        new_states[p.name] = tick.states[p.name] = st
        events += pool_events
        for a in pool_acts:
            acts.append(a)
            if a.spec is not None:
                tick.used.update(a.spec.gpus)
            hit = live.get(a.replica or "")
            if hit is None:
                continue
            r = hit
            if a.kind == "activate":
                change(r, "active")
            elif a.kind == "drain":
                change(r, "draining")
            elif a.kind == "retarget":
                live[r.id] = replace(r, target_role=a.target or r.target_role, role_since=now)
            elif a.kind == "stop":
                del live[r.id]
    # claims go back to the pools that hold them
    for p in cfg.pools:
        mine = {vid: c for vid, (owner, c) in tick.claims.items() if owner == p.name}
        if mine != dict(new_states.get(p.name, work[p.name]).claims):
            new_states[p.name] = replace(new_states.get(p.name, work[p.name]), claims=mine)

    # 5. Routes: active, alive and answering; newest-activated first, because right after a reload
    # every nginx worker breaks least_conn ties in list order, and the new replica has nothing to do.
    routes = []
    ids: set[str] = set()
    for p in cfg.pools:
        routed = sorted((r for r in live.values() if r.pool == p.name and r.role == "active" and r.ready),
                        key=lambda r: (-r.role_since, r.upstream))
        ids.update(r.id for r in routed)
        routes.append(PoolRoute(p.name, p.model, tuple(r.upstream for r in routed), p.fallback_pools,
                                 tuple(r.id for r in routed)))
    return Reconciled(tuple(acts), new_states, tuple(routes), frozenset(ids), tuple(events))


@dataclass
class _Tick:
    """What the pool steps of one tick share: the fleet as it is being changed."""

    cfg: FleetConfig
    snap: Snapshot
    now: float
    live: dict[str, ReplicaObs]
    states: dict[str, PoolState]  # this tick's, for pools already stepped
    claims: dict[str, tuple[str, Claim]]
    used: set[str]
    future: tuple[int, ...]
    taken: dict[str, int] = field(default_factory=dict)  # active replicas promised away this tick, per pool

    def blocked(self, pool: str) -> set[str]:
        """GPUs pool may not place on: held, or claimed by another pool."""
        out = set(self.used)
        for owner, c in self.claims.values():
            if owner != pool:
                out.update(c.gpus)
        return out

    def place(self, p: PoolConfig, blocked: set[str]) -> Placement | None:
        return place_replica(self.snap.gpus, p, blocked, self.future)

    def shares(self, p: PoolConfig, d: Decision[Any], given: int) -> dict[str, PoolShare]:
        out = {}
        for q in self.cfg.pools:
            rs = [r for r in self.live.values() if r.pool == q.name]
            have = sum(1 for r in rs if r.role == "active" or (r.role == "starting" and r.target_role == "active"))
            serving = sum(1 for r in rs if r.role == "active" and r.ready and r.id not in self.claims)
            if q.name == p.name:
                out[q.name] = PoolShare(have, d.desired_active, q.min_replicas, q.priority, serving)
                continue
            st = self.states.get(q.name)
            desired = st.decision.desired_active if st and st.decision else q.min_replicas
            out[q.name] = PoolShare(have, desired, q.min_replicas, q.priority, serving)
        return out

    def candidates(self) -> list[Candidate]:
        return [Candidate(r.id, r.pool, r.role, r.gpus, r.load, r.created_at, r.sleeping)
                for r in self.live.values()
                if r.id not in self.claims and r.gpus and (
                    r.role == "warm" or (r.role == "starting" and r.target_role == "warm")
                    or (r.role == "active" and r.ready))]


def _pool_step(
    tick: _Tick, p: PoolConfig, st: PoolState, policy: Policy, initial_state: Callable[[PoolConfig, int], Any] | None,
) -> tuple[PoolState, list[Action], list[Event]]:
    snap, now, live = tick.snap, tick.now, tick.live
    mine = [r for r in live.values() if r.pool == p.name]
    routed = [r for r in mine if r.role == "active" and r.ready]
    sig = pool_signals(now, [r.samples for r in routed], p.behavior.metric_window_s, snap.held.get(p.name, 0))
    history = tuple(s for s in st.signals if s.t >= now - HISTORY_S) + (sig,)
    view = PoolView(
        active=len(routed),
        warm=sum(1 for r in mine if r.role == "warm"),
        starting=sum(1 for r in mine if r.role == "starting"),
        draining=sum(1 for r in mine if r.role == "draining"),
    )
    pstate = st.policy
    if pstate is None:
        # After a restart: start from what is routed, not from min_replicas.
        start = min(max(view.active, p.min_replicas), p.max_replicas)
        pstate = initial_state(p, start) if initial_state else PolicyState(desired=start)
    d = policy(p, history, view, pstate, now)
    events: list[Event] = []
    prev = st.decision
    if prev is None or (prev.desired_active, prev.desired_warm, prev.panic) != (
            d.desired_active, d.desired_warm, d.panic):
        events.append(Event("decision", p.name, {
            "desired_active": d.desired_active, "desired_warm": d.desired_warm, "panic": d.panic,
            "reason": d.reason, "active": view.active, "warm": view.warm, "driver": d.driver,
            "direction": "initial" if prev is None else "up" if d.desired_active > prev.desired_active else
            "down" if d.desired_active < prev.desired_active else "same"}))
    if d.panic and not (prev is not None and prev.panic):
        events.append(Event("panic", p.name, {"desired_active": d.desired_active, "reason": d.reason}))
    elif prev is not None and prev.panic and not d.panic:
        events.append(Event("panic_end", p.name, {"desired_active": d.desired_active}))
    sat = next_saturation(p.saturation, sig.waiting, sig.ready, st.saturation, now)
    if sat.saturated != st.saturation.saturated:
        events.append(Event("overflow" if sat.saturated else "overflow_end", p.name, {
            "waiting_per_replica": round(sat.value or 0.0, 3), "to": list(p.fallback_pools)}))

    # A replica another pool's claim moves elsewhere is not this pool's to plan with until it drains: the
    # plan starts (or activates) its replacement; it serves meanwhile.
    moving = [r for r in mine if r.role == "active" and (c := tick.claims.get(r.id)) and c[1].kind == "move"]
    planned = [r for r in mine if r not in moving]
    acts: list[Action] = []
    no_capacity = None
    backoff = st.backoff_until > now
    activating: set[str] = set()
    unmet = 0
    given = 0  # active replicas this step placed or has GPUs promised for
    spoken: set[str] = set()  # GPUs promised to this step's earlier starts, not yet free
    mine_claims = {vid: c for vid, (owner, c) in tick.claims.items() if owner == p.name}
    planned_acts = plan(p.name, d.desired_active, d.desired_warm, [_view(r) for r in planned])
    for i, a in enumerate(planned_acts):
        rest = planned_acts[i + 1:]
        if a.kind == "activate" and live[a.replica or ""].sleeping:
            # a sleeper serves once awake: wake it now, activate it the tick it answers awake
            acts.append(Action("wake", p.name, a.replica, reason="scale-up: wake a sleeping warm replica"))
            activating.add(a.replica or "")
        elif a.kind == "activate":
            activating.add(a.replica or "")
            acts.append(a)
        elif a.kind in ("retarget", "drain"):
            acts.append(a)
        elif a.kind == "stop":
            acts.append(replace(a, detail={"role": live[a.replica or ""].role}))
        elif a.kind == "start" and a.role:
            if backoff:  # crash loop: no cold start until the backoff has passed
                unmet += a.role == "active"
                continue
            blocked = tick.blocked(p.name) | spoken
            placed = tick.place(p, blocked)
            if placed is None:
                if a.role != "active":  # a warm replica is not worth another pool's GPUs
                    no_capacity = no_capacity or f"no free GPUs for a {p.gpus_per_replica}-GPU warm replica"
                    continue
                unmet += 1
                got = _arbitrate(tick, p, d, blocked, mine_claims, given, acts, events)
                if got is None:
                    short = f"no free GPUs for a {p.gpus_per_replica}-GPU replica"
                    no_capacity = f"{no_capacity}; then {short}" if no_capacity else short
                    unmet += sum(1 for x in rest if x.kind == "start" and x.role == "active")
                    break
                gpus, note = got
                spoken.update(gpus)
                given += 1
                no_capacity = note
                continue
            tick.used.update(placed.gpus)
            given += a.role == "active"
            spec = replica_spec(p, a.role, placed.gpus, placed.cpus)
            acts.append(Action("start", p.name, None, role=a.role, reason=a.reason, spec=spec,
                               detail={"placement": placed.note}))
    # A moved replica drains once the pool serves its desired count without it.
    serving = sum(1 for r in planned if r.role == "active" and r.ready)
    for r in moving:
        if serving >= d.desired_active:
            owner = tick.claims[r.id][0]
            acts.append(Action("drain", p.name, r.id, role="draining", claimed_for=owner,
                               reason=f"moved: its replacement serves, its GPUs go to pool {owner}"))
    if unmet == 0:
        # nothing this pool still waits for: what it claimed is placed, or no longer needed
        for vid in list(mine_claims):
            tick.claims.pop(vid, None)
    # The warm pool's sleepers: `warm_pool.asleep` of the idle warm replicas sleep, the others stay awake.
    touched = activating | {a.replica for a in acts if a.replica}
    warm = sorted((r for r in mine if r.role == "warm" and r.ready and r.id not in touched),
                  key=lambda r: r.created_at)
    asleep = [r for r in warm if r.sleeping]
    awake = [r for r in warm if not r.sleeping]
    want = min(p.warm_pool.asleep, len(warm))
    for r in awake[: max(want - len(asleep), 0)]:
        if r.load == 0:
            acts.append(Action("sleep", p.name, r.id, reason="warm pool: keep it asleep (warm_pool.asleep)"))
    for r in asleep[: max(len(asleep) - want, 0)]:
        acts.append(Action("wake", p.name, r.id, reason="warm pool: keep it awake (warm_pool.asleep)"))
    if no_capacity is not None and no_capacity != st.no_capacity:
        events.append(Event("no_capacity", p.name, {"reason": no_capacity, "unmet": unmet}))
    return replace(st, policy=d.state, signals=history, decision=d, no_capacity=no_capacity, error=None,
                   saturation=sat, unmet=unmet), acts, events


def _arbitrate(
    tick: _Tick, p: PoolConfig, d: Decision[Any], blocked: set[str], mine_claims: Mapping[str, Claim], given: int,
    acts: list[Action], events: list[Event],
) -> tuple[tuple[str, ...], str] | None:
    """GPUs for one replica of p that found none free: (the GPUs it will get, why it waits), or None.
    Appends the victims' actions and the events; records the claims on the tick."""
    now = tick.now
    # 1. GPUs already promised to this pool would do: wait for them.
    mine = {g for c in mine_claims.values() for g in c.gpus}
    placed = tick.place(p, blocked - mine)
    if placed is not None and mine & set(placed.gpus):
        promised = sorted(vid for vid, c in mine_claims.items() if set(c.gpus) & set(placed.gpus))
        return placed.gpus, f"waiting for GPUs reclaimed from {', '.join(promised)}"
    shares = tick.shares(p, d, given)
    cands = tick.candidates()

    def place(b: set[str]) -> Placement | None:
        return tick.place(p, b)

    def claim(v: Candidate, gpus: tuple[str, ...], kind: ClaimKind, how: str) -> None:
        tick.claims[v.id] = (p.name, Claim(v.id, v.pool, gpus, kind, now))
        events.append(Event("reclaim" if kind == "reclaim" else "move", p.name, {
            "from_pool": v.pool, "for_pool": p.name, "replica": v.id, "role": v.role, "how": how,
            "gpus": list(v.gpus), "priority": [tick.cfg.pool(v.pool).priority, p.priority]}))
        if how == "stop":
            acts.append(Action("stop", v.pool, v.id, reason=f"reclaimed: its GPUs for pool {p.name}",
                               detail={"role": v.role}))
        elif how == "drain":
            acts.append(Action("drain", v.pool, v.id, role="draining", claimed_for=p.name,
                               reason=f"reclaimed: its GPUs for pool {p.name} (priority {p.priority})"))
            tick.taken[v.pool] = tick.taken.get(v.pool, 0) + 1

    # 2. Replicas that serve nobody (sleeping, warm, loading for the warm pool).
    found = find_reclaim(p.name, shares, cands, blocked, place, spare_only=True, taken=tick.taken, given=given)
    if found is not None:
        victims, placed = found
        for v in victims:
            claim(v, placed.gpus, "reclaim", "stop")
        return placed.gpus, f"waiting for GPUs reclaimed from {', '.join(v.id for v in victims)}"
    # 3. Fragmentation: re-place a smaller replica elsewhere (its replacement serves before it drains).
    if p.gpus_per_replica > 1:
        moved = find_move(p.name, shares, cands, blocked, place,
                          lambda q, b: tick.place(tick.cfg.pool(q), b), p.gpus_per_replica)
        if moved is not None:
            v, placed = moved
            claim(v, placed.gpus, "move", "stop" if v.role == "warm" else "move")
            return placed.gpus, f"waiting for {v.id} of pool {v.pool} to move off GPUs {', '.join(v.gpus)}"
    # 4. Serving replicas above their pool's minimum, by drain.
    found = find_reclaim(p.name, shares, cands, blocked, place, spare_only=False, taken=tick.taken, given=given)
    if found is not None:
        victims, placed = found
        for v in victims:
            claim(v, placed.gpus, "reclaim", "stop" if v.role != "active" else "drain")
        return placed.gpus, f"waiting for GPUs reclaimed from {', '.join(v.id for v in victims)}"
    return None

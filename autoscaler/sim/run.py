"""`gpufleet simulate`: one host on simulated time, autoscaled by the real `reconcile`.

Arrivals (a scenario or a trace, the same readers as `scale-test`) go through a
gateway that routes as nginx does (least connections over the routed set, ties
to the first listed, 503 when a pool has nothing routed) to replicas modelled
by `SimReplica` with the pool's engine profile. Every `tick_s` the autoscaler
scrapes every replica, builds the same `Snapshot` the live controller builds,
and calls `reconcile` — gpufleet's policy or a baseline's — whose actions take
the profile's lifecycle delays: a start serves after startup + load time, a
route change after the reload time (reloads debounced as configured), a stop
holds its GPUs for the stop time and fails whatever it still held.

The output has scale-test's shape: per-request `Result`s and a `/status`
timeline, so `report.summarize`, `write_report` and the plot work unchanged.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoscaler.config import FleetConfig, PoolConfig
from autoscaler.gateway.render import PoolRoute
from autoscaler.gateway.routing import pick_pool
from autoscaler.gpus.placement import make_placer
from autoscaler.loop.actuate import Actuator, InlineExecutor, run_inline
from autoscaler.loop.lifecycle import place_replica
from autoscaler.loop.observe import SAMPLES_KEPT
from autoscaler.loop.policy import decide
from autoscaler.loop.reconcile import reconcile
from autoscaler.loop.record import Recorder, build_status, gpu_status
from autoscaler.loop.signals import ReplicaSample
from autoscaler.loop.snapshot import GpuView, PoolState, ReplicaObs, Snapshot
from autoscaler.runtime.base import Replica, ReplicaSpec, Role
from autoscaler.scaletest.loadgen import Arrival, Result
from autoscaler.sim.replica import SimReplica, SimRequest
from autoscaler.status import GatewayStatus, ReplicaStatus
from inference.engines.profiles import PROFILES, SimProfile

# the kinds of event, in their order at the same instant: a tick sees what happened at its time
_ARRIVAL, _WAKE, _ROUTES, _GONE, _EXPIRE, _CRASH, _AWAKE, _TICK = range(8)
_WOKEN = -1  # a tick the activator asked for (a request held): no next tick scheduled from it


def pool_profile(pool: PoolConfig) -> SimProfile:
    s = pool.sim
    return PROFILES[s.profile].with_overrides(
        load_time_s=s.load_time_s, max_num_seqs=s.max_num_seqs, step_base_s=s.step_base_s,
        step_per_seq_s=s.step_per_seq_s, kv_capacity_tokens=s.kv_capacity_tokens)


@dataclass
class _Node:
    """A replica as the simulated runtime knows it (what Docker labels + the container would say)."""

    rep: SimReplica
    pool: str
    role: Role
    target_role: Role
    created_at: float
    role_since: float
    ready_at: float
    gpus: tuple[str, ...]
    config_hash: str
    samples: deque[ReplicaSample] = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))
    stopping: bool = False
    alive: bool = True  # False: the process died (a crash); reconcile sees it and replaces it
    sleeping: bool = False  # sleep mode: a warm replica's weights off the GPU until a wake-up completes

    @property
    def upstream(self) -> str:
        return f"{self.rep.id}:8000"


@dataclass
class SimResult:
    name: str
    results: list[Result]
    timeline: list[tuple[float, dict[str, Any]]]
    events: list[dict[str, Any]]
    end_s: float
    wall_s: float
    pool: str


def simulate(
    cfg: FleetConfig,
    arrivals: Sequence[Arrival],
    *,
    pool: str | None = None,
    name: str = "gpufleet",
    policy: Callable[..., Any] = decide,
    initial_state: Callable[[PoolConfig, int], Any] | None = None,
    duration_s: float | None = None,
    by_pool: Mapping[str, Sequence[Arrival]] | None = None,
    crashes: Sequence[tuple[float, str]] = (),
) -> SimResult:
    """Replay `arrivals` (all to one pool: `pool`, default the first) through a simulated fleet; or
    `by_pool`, each pool's own arrivals (then `arrivals` is ignored and each result names its pool).

    crashes: (time, pool): at that time the pool's oldest serving replica dies, failing what it held.

    The fleet starts in the steady state a running stack is in before traffic: min_replicas
    active and warm_pool.min warm, loaded. The gateway routes as nginx + gateway.js do: to the
    request's pool, else along its fallback chain (a pool with nothing routed, or one the last tick
    found saturated, is passed over; a fallback's max_tokens cap applies), else the activator.
    """
    wall0 = time.perf_counter()
    target = cfg.pool(pool) if pool else cfg.pools[0]
    if by_pool is None:
        by_pool = {target.name: arrivals}
    profiles = {p.name: pool_profile(p) for p in cfg.pools}
    ttft_signal = {p.name: any(n == "ttft_p95_s" for n, _ in p.targets.items()) for p in cfg.pools}
    placer = make_placer(cfg.gpus)
    gpus = GpuView(placer.topo, frozenset(placer.cordoned))
    nodes: dict[str, _Node] = {}
    ids = itertools.count(1)
    heap: list[tuple[float, int, int, Any]] = []
    order = itertools.count()
    results: list[Result] = []
    timeline: list[tuple[float, dict[str, Any]]] = []
    recorder = Recorder(lambda: now, keep=None)  # every event: SimResult.events
    done: list[SimRequest] = []

    def push(t: float, kind: int, payload: Any) -> None:
        heapq.heappush(heap, (t, kind, next(order), payload))

    def new_node(p: PoolConfig, role: Role, target_role: Role, t: float, gpu_ids: tuple[str, ...],
                 ready_at: float) -> _Node:
        rid = f"r-{p.name}-{next(ids)}"
        n = _Node(SimReplica(rid, profiles[p.name]), p.name, role, target_role, t, t, ready_at, gpu_ids,
                  p.config_hash())
        nodes[rid] = n
        return n

    # The steady state before traffic: loaded replicas, already routed.
    taken: set[str] = set()
    for p in cfg.pools:
        for i in range(p.min_replicas + p.warm_pool.min):
            role: Role = "active" if i < p.min_replicas else "warm"
            placed = place_replica(gpus, p, taken)
            if placed is None:
                raise ValueError(f"pool {p.name}: the GPUs do not fit its min_replicas + warm_pool.min")
            taken.update(placed.gpus)
            new_node(p, role, role, -1.0, placed.gpus, -1.0)
    routed: dict[str, list[_Node]] = {p.name: [n for n in nodes.values() if n.pool == p.name and n.role == "active"]
                                      for p in cfg.pools}
    routed_ids = frozenset(n.rep.id for ns in routed.values() for n in ns)
    pending: tuple[PoolRoute, ...] | None = None
    pending_at: float | None = None
    requested: tuple[PoolRoute, ...] | None = None
    last_reload = -math.inf
    reloads = 0
    states: dict[str, PoolState] = {}

    tagged = sorted(((a, pn) for pn, arr in by_pool.items() for a in arr), key=lambda x: x[0].at)
    reqs = [SimRequest(i, a.at, a.prompt_tokens, max(1, a.max_tokens), a.stream) for i, (a, _) in enumerate(tagged)]
    asked = {r.i: pn for r, (_, pn) in zip(reqs, tagged, strict=True)}  # request → the pool it asked for
    served_by: dict[int, str] = {}
    for rq in reqs:
        push(rq.at, _ARRIVAL, rq)
    end = duration_s if duration_s is not None else (reqs[-1].at if reqs else 0.0)
    push(cfg.tick_s, _TICK, 1)
    for at, pn in crashes:
        push(at, _CRASH, pn)
    outstanding = len(reqs)

    version: dict[str, int] = {}  # the one wake event of each replica that counts
    # The activator: requests for a pool with no routed replica wait here until one serves (or time out).
    holding: dict[str, list[SimRequest]] = {p.name: [] for p in cfg.pools}
    saturated: dict[str, bool] = {}  # what the gateway's state file says (the last tick's)

    def dispatch(r: SimRequest, servers: Sequence[_Node], t: float) -> None:
        best = min(servers, key=lambda n: n.rep.load)  # least_conn; ties: first listed
        before = best.rep.wake_at
        best.rep.enqueue(r, t, done)
        finish(done)
        settle(best.rep, before)

    def settle(rep: SimReplica, before: float | None) -> None:
        if rep.wake_at < math.inf and rep.wake_at != before:
            version[rep.id] = version.get(rep.id, 0) + 1
            push(rep.wake_at, _WAKE, (rep, version[rep.id]))

    done_ids: list[int] = []

    def finish(batch: list[SimRequest]) -> None:
        nonlocal outstanding
        for r in batch:
            outstanding -= 1
            results.append(_result(r))
            done_ids.append(r.i)
        batch.clear()

    class SimRuntime:
        """The runtime as the Actuator drives it: replicas are nodes; a start loads for startup_s + load_time_s,
        a stop fails what the replica still held and keeps its GPUs for stop_s."""

        name = "simulated"

        def list(self) -> list[Replica]:
            return [_replica(n) for n in nodes.values()]

        def create(self, spec: ReplicaSpec) -> Replica:
            p = cfg.pool(spec.pool)
            prof = profiles[p.name]
            return _replica(new_node(p, "starting", spec.target_role, now, spec.gpus,
                                     now + prof.startup_s + prof.load_time_s))

        def set_role(self, replica_id: str, role: Role, target_role: Role | None = None,
                     claimed_for: str | None = None) -> None:
            n = nodes[replica_id]
            n.role, n.target_role, n.role_since = role, target_role or role, now

        def remove(self, replica_id: str) -> None:
            n = nodes.get(replica_id)
            if n is None or n.stopping:
                return
            finish(n.rep.fail_all("stream cut: replica stopped", now))
            n.stopping = True
            push(now + profiles[n.pool].stop_s, _GONE, n.rep.id)
            for ns in routed.values():  # a stopped process refuses connections at once
                if n in ns:
                    ns.remove(n)

    class SimGateway:
        """nginx as the Actuator drives it: a change of routes applies after the reload interval and reload_s;
        the overflow state file applies at once."""

        async def update(self, routes: Sequence[PoolRoute], tag: object = None) -> bool:
            nonlocal requested, pending, pending_at
            if tuple(routes) == requested:
                return False
            requested = pending = tuple(routes)
            if pending_at is None:
                pending_at = max(now, last_reload + cfg.gateway.reload_min_interval_s) + profiles[target.name].reload_s
                push(pending_at, _ROUTES, None)
            return True

        def publish_state(self, state: Mapping[str, bool], at: float) -> None:
            saturated.clear()
            saturated.update(state)

    def activator(routes: Sequence[PoolRoute]) -> None:
        """The activator forwards held requests to a ready replica at once, before nginx reloads."""
        by_up = {n.upstream: n for n in nodes.values() if not n.stopping and n.alive}
        for pr in routes:
            held = holding.get(pr.name) or []
            ready = [by_up[u] for u in pr.servers if u in by_up] if held else []
            if ready:
                for r in held:
                    served_by[r.i] = pr.name
                    dispatch(r, ready, now)
                held.clear()

    async def sleeper(rid: str, kind: str) -> None:
        """vLLM's sleep mode: asleep at once; awake again after the profile's wake_s."""
        n = nodes.get(rid)
        if n is None:
            return
        if kind == "sleep":
            n.sleeping = True
        elif n.sleeping:
            push(now + (profiles[n.pool].wake_s or 0.0), _AWAKE, rid)

    actuator = Actuator(SimRuntime(), SimGateway(), recorder, InlineExecutor(), lambda: now,
                        publish_routes=activator, sleeper=sleeper)

    now = 0.0
    while heap:
        now, kind, _, payload = heapq.heappop(heap)
        if kind == _WAKE:
            rep, v = payload
            n = nodes.get(rep.id)
            if n is None or n.stopping or not n.alive or version.get(rep.id) != v:
                continue  # superseded
            rep.wake(now, done)
            finish(done)
            settle(rep, None)
        elif kind == _ARRIVAL:
            r = payload
            home = cfg.pool(asked[r.i])
            chain = [(home.name, None)] + [(f.pool, f.max_tokens) for f in home.fallback]
            at = pick_pool([pn for pn, _ in chain], {pn for pn, ns in routed.items() if ns}, saturated)
            if at < 0:
                prof = profiles[home.name]
                if r.kv_need > min(prof.max_model_len, prof.kv_capacity_tokens):
                    r.error, r.done = "HTTP 400", now
                    finish([r])
                    continue
                held = holding[home.name]
                if not cfg.activator.enabled or len(held) >= home.max_held:
                    r.error, r.done = "HTTP 503", now
                    finish([r])
                    continue
                held.append(r)
                push(now + home.hold_timeout_s, _EXPIRE, r)
                if len(held) == 1:
                    push(now, _TICK, _WOKEN)  # held requests are demand at once
                continue
            pn, cap = chain[at]
            if cap is not None:
                r.max_tokens = min(r.max_tokens, cap)
            prof = profiles[pn]
            if r.kv_need > min(prof.max_model_len, prof.kv_capacity_tokens):
                r.error, r.done = "HTTP 400", now
                finish([r])
                continue
            served_by[r.i] = pn
            dispatch(r, routed[pn], now)
        elif kind == _EXPIRE:
            r = payload
            held = holding[asked[r.i]]
            if r in held:
                held.remove(r)
                r.error, r.done = "HTTP 503 hold timeout", now
                finish([r])
        elif kind == _ROUTES:
            if pending is None or pending_at != now:
                continue
            by_up = {n.upstream: n for n in nodes.values() if not n.stopping and n.alive}
            routed = {p.name: [by_up[s] for s in p.servers if s in by_up] for p in pending}
            routed_ids = frozenset(n.rep.id for ns in routed.values() for n in ns)
            pending, pending_at, last_reload = None, None, now
            reloads += 1
        elif kind == _GONE:
            nodes.pop(payload, None)
        elif kind == _CRASH:
            victims = sorted((n for n in nodes.values() if n.pool == payload and n.alive and not n.stopping
                              and n.role == "active"), key=lambda n: n.created_at)
            if victims:
                n = victims[0]
                n.alive = False
                finish(n.rep.fail_all("connection reset: replica crashed", now))
                for ns in routed.values():  # nginx passes over an upstream that refuses connections
                    if n in ns:
                        ns.remove(n)
        elif kind == _AWAKE:
            n = nodes.get(payload)
            if n is not None:
                n.sleeping = False
                push(now, _TICK, _WOKEN)  # as live: a finished wake-up ticks the loop at once
        else:  # a control-loop tick
            tick: int = payload
            for n in nodes.values():
                if not n.stopping and n.alive:
                    n.samples.append(n.rep.sample(now, ttft_signal[n.pool]))
            snap = Snapshot(now=now, replicas=tuple(_obs(n, now) for n in nodes.values()), gpus=gpus,
                            routed=routed_ids, gateway_pending=pending is not None,
                            held={pn: len(h) for pn, h in holding.items() if h},
                            start_failures=actuator.take_start_failures())
            out = reconcile(cfg, snap, states, now, policy, initial_state)
            states = dict(out.states)
            run_inline(actuator.apply(out))  # the live Actuator, on the simulated runtime and gateway
            if tick == _WOKEN:
                continue
            timeline.append((now, _status(cfg, nodes, states, gpus, now, tick, _this_tick(recorder, now),
                                          {pn: len(h) for pn, h in holding.items() if h}, reloads, last_reload,
                                          profiles[target.name].reload_s)))
            if outstanding > 0 or now + cfg.tick_s <= end + cfg.tick_s:
                push(now + cfg.tick_s, _TICK, tick + 1)
    if len(by_pool) > 1 or any(pn != target.name for pn in by_pool):
        for res, i in zip(results, done_ids, strict=True):
            res.pool, res.served_by = asked[i], served_by.get(i)
    return SimResult(name, sorted(results, key=lambda r: r.at), timeline, list(recorder.events), now,
                     time.perf_counter() - wall0, target.name)


def _obs(n: _Node, now: float) -> ReplicaObs:
    return ReplicaObs(
        id=n.rep.id, pool=n.pool, role=n.role, target_role=n.target_role, created_at=n.created_at,
        role_since=n.role_since, alive=n.alive, ready=n.alive and (n.role != "starting" or now >= n.ready_at),
        gpus=n.gpus, config_hash=n.config_hash, upstream=n.upstream, samples=tuple(n.samples), stopping=n.stopping,
        sleeping=n.sleeping)


def _result(r: SimRequest) -> Result:
    ok = r.error is None
    status = int(r.error.split()[1]) if r.error and r.error.startswith("HTTP ") else 200
    e2e = (r.done or r.at) - r.at
    ttft = (r.first_token - r.at) if (ok and r.stream and r.first_token is not None) else None
    return Result(at=r.at, sent=r.at, status=status, ok=ok, error=r.error, stream=r.stream, ttft=ttft,
                  e2e=e2e if status == 200 else None, first_byte_at=r.first_token,
                  tokens=r.max_tokens if ok else 0)


def _this_tick(recorder: Recorder, now: float) -> list[dict[str, Any]]:
    """The events recorded at `now`, oldest first (the newest are at the end of the log)."""
    out = []
    for e in reversed(recorder.events):
        if e["t"] != now:
            break
        out.append(e)
    return out[::-1]


def _replica(n: _Node) -> Replica:
    return Replica(id=n.rep.id, pool=n.pool, model="", role=n.role, target_role=n.target_role,
                   url=f"sim://{n.upstream}", upstream=n.upstream, gpus=n.gpus, config_hash=n.config_hash,
                   created_at=n.created_at, alive=n.alive, role_since=n.role_since, stopping=n.stopping)


def _status(cfg: FleetConfig, nodes: dict[str, _Node], states: dict[str, PoolState], gpus: GpuView, now: float,
            tick: int, events: list[dict[str, Any]], held: Mapping[str, int], reloads: int, last_reload: float,
            reload_s: float) -> dict[str, Any]:
    """The `/status` document as the live stack would serve it now, built by the live stack's own builder;
    only this tick's events (the report reads each once)."""
    shown = [(n.pool, ReplicaStatus(id=n.rep.id, role=n.role, target_role=n.target_role,
                                    ready=n.role != "starting" or now >= n.ready_at, gpus=list(n.gpus),
                                    url=f"sim://{n.upstream}", upstream=n.upstream, created_at=n.created_at,
                                    role_since=n.role_since, load=float(n.rep.load), sleeping=n.sleeping))
             for n in nodes.values() if not n.stopping]
    holders = {g: n.rep.id for n in nodes.values() for g in n.gpus}
    status = build_status(
        cfg, states, lambda name: cfg.pool(name).engine_spec, shown, now=now, runtime="simulated", ticks=tick,
        gpus=gpu_status(gpus.topo, dict.fromkeys(gpus.cordoned, "cordoned"), holders),
        gateway=GatewayStatus(reloads=reloads, errors=0, last_error=None,
                              last_reload_at=last_reload if reloads else None,
                              last_reload_s=reload_s if reloads else None),
        events=events, held=held, last_tick_at=now)
    return status.model_dump()

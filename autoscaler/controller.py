"""The control loop: observe → decide → act, once a tick.

Observe lists replicas from the runtime (the source of truth) and scrapes each
one; decide is the pure policy; act applies the planner's actions through the
runtime and the gateway, writing roles to the runtime before routing changes.
Everything kept here in memory (metric history, policy state) is rebuilt from
the replicas after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from autoscaler.config import FleetConfig, PoolConfig
from autoscaler.gateway.nginx import Gateway
from autoscaler.gateway.render import PoolRoute
from autoscaler.gpus.slots import Placement, held
from autoscaler.gpus.topology import LinkKind, Topology
from autoscaler.planner import Action, ReplicaView, drain_finished, plan
from autoscaler.policy import Decision, PolicyState, PoolView, decide
from autoscaler.prom_sd import TargetsWriter
from autoscaler.runtime.base import Replica, ReplicaSpec, Role, Runtime
from autoscaler.signals import PoolSignals, ReplicaSample, parse_metrics, pool_signals

log = logging.getLogger("gpufleet.controller")

HISTORY_S = 120.0  # metric history kept per replica and pool
GPU_HEALTH_EVERY = 10  # ticks between NVML health checks


class Placer(Protocol):
    topo: Topology
    cordoned: dict[str, str]

    def place(self, k: int, used: set[str], *, model: str | None = None, min_memory_mb: int = 0,
              min_link: LinkKind | None = None) -> Placement | None: ...

    def health_check(self) -> dict[str, str]: ...


def replica_argv(pool: PoolConfig) -> tuple[str, ...]:
    if pool.engine == "command":
        assert pool.command is not None
        return tuple(a.replace("{model}", pool.model) for a in pool.command)
    s = pool.sim
    argv = [sys.executable, "-m", "inference", "--host", "{host}", "--port", "{port}",
            "--model", pool.model, "--profile", s.profile, "--replica-id", "{replica_id}"]
    for flag, val in (("--load-time", s.load_time_s), ("--max-num-seqs", s.max_num_seqs),
                      ("--step-base", s.step_base_s), ("--step-per-seq", s.step_per_seq_s),
                      ("--kv-capacity", s.kv_capacity_tokens)):
        if val is not None:
            argv += [flag, str(val)]
    return tuple(argv)


@dataclass
class ReplicaHealth:
    samples: deque[ReplicaSample] = field(default_factory=lambda: deque(maxlen=256))
    ready: bool = False
    failures: int = 0
    last_error: str | None = None


@dataclass
class PoolRuntimeState:
    policy: PolicyState = field(default_factory=PolicyState)
    signals: deque[PoolSignals] = field(default_factory=lambda: deque(maxlen=512))
    decision: Decision | None = None
    no_capacity: str | None = None


class Controller:
    def __init__(
        self,
        cfg: FleetConfig,
        runtime: Runtime,
        gateway: Gateway,
        placer: Placer,
        targets: TargetsWriter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.gateway = gateway
        self.placer = placer
        self.targets = targets
        self.clock = clock
        self.health: dict[str, ReplicaHealth] = {}
        self.pools: dict[str, PoolRuntimeState] = {p.name: PoolRuntimeState() for p in cfg.pools}
        self.events: deque[dict[str, Any]] = deque(maxlen=1000)
        self.replicas: list[Replica] = []
        self.ticks = 0
        self.tick_seconds: deque[float] = deque(maxlen=100)
        self._http = httpx.AsyncClient(timeout=cfg.scrape_timeout_s)
        self._busy: set[str] = set()  # replicas with a removal in flight
        self._changed = False  # a role changed or a replica came/went since the last list
        self._removals: set[asyncio.Task[None]] = set()
        self._routed: set[str] = set()  # replica ids in the config nginx last loaded
        self._pending_routes: set[str] = set()
        gateway.on_reload.append(self._on_reload)

    async def close(self) -> None:
        await self._http.aclose()

    def event(self, kind: str, pool: str | None = None, **detail: Any) -> None:
        e = {"t": self.clock(), "kind": kind, "pool": pool, **detail}
        self.events.append(e)
        log.info("%s %s %s", kind, pool or "", detail)

    # ---- observe -------------------------------------------------------------------------

    async def _scrape(self, r: Replica) -> None:
        h = self.health.setdefault(r.id, ReplicaHealth())
        try:
            if r.role == "starting":
                resp = await self._http.get(f"{r.url}/ready")
                h.ready = resp.status_code == 200
                h.failures = 0
                if not h.ready:
                    return
            resp = await self._http.get(f"{r.url}/metrics")
            resp.raise_for_status()
            h.samples.append(parse_metrics(resp.text, self.clock()))
            h.ready = True
            h.failures = 0
            h.last_error = None
        except (httpx.HTTPError, ValueError) as e:
            h.failures += 1
            h.last_error = f"{type(e).__name__}: {e}"
            if r.role != "starting":
                h.ready = h.failures < self.cfg.unhealthy_after

    async def observe(self) -> list[Replica]:
        reps = [r for r in self.runtime.list() if r.id not in self._busy]
        self._changed = False
        await asyncio.gather(*(self._scrape(r) for r in reps if r.alive))
        for rid in list(self.health):
            if rid not in {r.id for r in reps} and rid not in self._busy:
                del self.health[rid]
        self.replicas = reps
        return reps

    def _relist(self) -> list[Replica]:
        """The runtime's view again, but only if this tick changed it (a list is a Docker API call)."""
        if self._changed:
            self._changed = False
            self.replicas = [r for r in self.runtime.list() if r.id not in self._busy]
        return self.replicas

    def _set_role(self, rid: str, role: Role, target: Role | None = None) -> None:
        self.runtime.set_role(rid, role, target)
        self._changed = True

    def load(self, rid: str) -> float:
        h = self.health.get(rid)
        if not h or not h.samples:
            return 0.0
        s = h.samples[-1]
        return s.running + s.waiting

    # ---- act -----------------------------------------------------------------------------

    def _remove_later(self, r: Replica, why: str) -> None:
        """Stopping takes seconds (graceful first): never on the loop's critical path."""
        self._busy.add(r.id)
        self._changed = True
        self.event("stop", r.pool, replica=r.id, role=r.role, reason=why)

        async def go() -> None:
            try:
                await asyncio.to_thread(self.runtime.remove, r.id)
            except Exception as e:  # the next tick sees it again and retries
                log.error("stopping %s failed: %s", r.id, e)
            finally:
                self._busy.discard(r.id)
                self.health.pop(r.id, None)

        task = asyncio.get_running_loop().create_task(go())
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    def _place(self, pool: PoolConfig, target: str, used: set[str]) -> tuple[ReplicaSpec, str] | None:
        """Reserve GPUs for a new replica (in `used`) and describe it; None when nothing fits."""
        placement = self.placer.place(
            pool.gpus_per_replica, used, model=pool.gpu_model, min_memory_mb=pool.gpu_min_memory_mb,
            min_link=LinkKind[pool.gpu_min_link] if pool.gpu_min_link else None,
        )
        st = self.pools[pool.name]
        if placement is None:
            msg = f"no free GPUs for a {pool.gpus_per_replica}-GPU replica"
            if st.no_capacity != msg:
                self.event("no_capacity", pool.name, reason=msg)
            st.no_capacity = msg
            return None
        st.no_capacity = None
        used.update(placement.gpus)
        spec = ReplicaSpec(pool=pool.name, model=pool.model, argv=replica_argv(pool),
                           config_hash=pool.config_hash(), target_role=target,  # type: ignore[arg-type]
                           gpus=placement.gpus, cpus=placement.cpus, image=pool.image)
        return spec, placement.note

    async def _create(self, spec: ReplicaSpec, reason: str, placement: str) -> None:
        try:
            r = await asyncio.to_thread(self.runtime.create, spec)
        except Exception as e:  # an image missing, a daemon error: the next tick tries again
            self.event("start_failed", spec.pool, target=spec.target_role, reason=f"{type(e).__name__}: {e}")
            return
        self._changed = True
        self.event("start", spec.pool, replica=r.id, target=spec.target_role, gpus=list(r.gpus), reason=reason,
                   placement=placement)

    def _apply(self, pool: PoolConfig, actions: list[Action], by_id: dict[str, Replica],
               used: set[str]) -> list[tuple[ReplicaSpec, str, str]]:
        """Apply role changes now; return the replicas to create (slow: done after the gateway update)."""
        starts: list[tuple[ReplicaSpec, str, str]] = []
        for a in actions:
            if a.kind == "activate" and a.replica:
                self._set_role(a.replica, "active", "active")
                self.event("activate", pool.name, replica=a.replica, reason=a.reason)
            elif a.kind == "retarget" and a.replica and a.role:
                self._set_role(a.replica, "starting", a.role)
                self.event("retarget", pool.name, replica=a.replica, target=a.role, reason=a.reason)
            elif a.kind == "drain" and a.replica:
                self._set_role(a.replica, "draining")
                self.event("drain", pool.name, replica=a.replica, reason=a.reason)
            elif a.kind == "stop" and a.replica:
                self._remove_later(by_id[a.replica], a.reason)
            elif a.kind == "start" and a.role:
                placed = self._place(pool, a.role, used)
                if placed is None:
                    break
                starts.append((placed[0], a.reason, placed[1]))
        return starts

    def _view(self, r: Replica) -> ReplicaView:
        h = self.health.get(r.id)
        return ReplicaView(r.id, r.role, r.target_role, bool(h and h.ready), self.load(r.id),
                           r.created_at, r.role_since)

    def _on_reload(self) -> None:
        """nginx now routes exactly the pending set: record who joined (warm activation ends here) and left."""
        new = self._pending_routes
        for rid in sorted(new - self._routed):
            self.event("routed", next((r.pool for r in self.replicas if r.id == rid), None), replica=rid,
                       reload_s=round(self.gateway.stats.last_reload_s or 0, 4))
        for rid in sorted(self._routed - new):
            self.event("unrouted", next((r.pool for r in self.replicas if r.id == rid), None), replica=rid)
        self._routed = set(new)

    def _routes(self) -> list[PoolRoute]:
        by_upstream = {r.upstream: r.id for r in self.replicas}
        routes = self._route_table()
        self._pending_routes = {by_upstream[s] for p in routes for s in p.servers if s in by_upstream}
        return routes

    def _route_table(self) -> list[PoolRoute]:
        routes = []
        for p in self.cfg.pools:
            # Newest-activated first: right after a reload every worker breaks least_conn ties in
            # list order, so ties go to the replica that was just added (and has nothing to do).
            routed = sorted(
                (r for r in self.replicas
                 if r.pool == p.name and r.role == "active" and r.alive and r.id not in self._busy
                 and self.health.get(r.id, ReplicaHealth()).ready),
                key=lambda r: (-r.role_since, r.upstream))
            servers = tuple(r.upstream for r in routed)
            routes.append(PoolRoute(p.name, p.model, servers, p.fallback))
        return routes

    async def tick(self) -> None:
        t0 = time.monotonic()
        now = self.clock()
        if self.ticks % GPU_HEALTH_EVERY == 0:
            for gid, why in (await asyncio.to_thread(self.placer.health_check)).items():
                self.event("cordon", gpu=gid, reason=why)
        reps = await self.observe()
        used = set(held(reps)) | {g for r in self.replicas if r.id in self._busy for g in r.gpus}

        # Replicas that died or stopped answering go first, so the policy sees the truth.
        for r in reps:
            h = self.health.get(r.id, ReplicaHealth())
            if not r.alive:
                self._remove_later(r, "process/container exited")
            elif r.role != "starting" and h.failures >= self.cfg.unhealthy_after:
                self._remove_later(r, f"failed {h.failures} health checks: {h.last_error}")
            elif r.role == "starting" and h.ready:
                self._set_role(r.id, r.target_role)
                self.event("ready", r.pool, replica=r.id, role=r.target_role,
                           load_s=round(now - r.created_at, 3))
        reps = self._relist()

        # Drains that are done: demote to warm if the pool wants one, else stop.
        settle = max(1.0, 2 * self.cfg.gateway.reload_min_interval_s)
        for p in self.cfg.pools:
            warm_now = sum(1 for r in reps if r.pool == p.name and r.role == "warm")
            want_warm = self.pools[p.name].decision.desired_warm if self.pools[p.name].decision else 0
            for r in reps:
                if r.pool != p.name or r.role != "draining":
                    continue
                why = drain_finished(self._view(r), now, p.drain_timeout_s, settle)
                if why is None or self.gateway.pending:
                    continue
                healthy = self.health.get(r.id, ReplicaHealth()).ready
                if warm_now < want_warm and healthy and r.config_hash == p.config_hash():
                    self._set_role(r.id, "warm", "warm")
                    warm_now += 1
                    self.event("demote", p.name, replica=r.id, reason=why)
                else:
                    self._remove_later(r, why)
        reps = self._relist()

        starts: list[tuple[ReplicaSpec, str, str]] = []
        for p in self.cfg.pools:
            starts += self._decide_and_act(p, reps, now, used)

        # Routing first (warm activation, drains), then the slow part: creating replicas.
        self._relist()
        self.gateway.update(self._routes())
        if starts:
            await asyncio.gather(*(self._create(*s) for s in starts))
            self._relist()
        if self.targets is not None:
            self.targets.write(self.replicas)
        self.ticks += 1
        self.tick_seconds.append(time.monotonic() - t0)

    def _decide_and_act(self, p: PoolConfig, reps: list[Replica], now: float,
                        used: set[str]) -> list[tuple[ReplicaSpec, str, str]]:
        st = self.pools[p.name]
        mine = [r for r in reps if r.pool == p.name]
        routed = [r for r in mine if r.role == "active" and self.health.get(r.id, ReplicaHealth()).ready]
        hist = [list(self.health[r.id].samples) for r in routed if r.id in self.health]
        sig = pool_signals(now, hist, p.behavior.metric_window_s)
        st.signals.append(sig)
        while st.signals and st.signals[0].t < now - HISTORY_S:
            st.signals.popleft()
        view = PoolView(
            active=len(routed),
            warm=sum(1 for r in mine if r.role == "warm"),
            starting=sum(1 for r in mine if r.role == "starting"),
            draining=sum(1 for r in mine if r.role == "draining"),
        )
        if st.decision is None and st.policy.desired is None:
            # After a restart: start from what is routed, not from min_replicas.
            st.policy = PolicyState(desired=min(max(view.active, p.min_replicas), p.max_replicas))
        d = decide(p, list(st.signals), view, st.policy, now)
        prev = st.decision
        st.policy = d.state
        st.decision = d
        if prev is None or (prev.desired_active, prev.desired_warm, prev.panic) != (
            d.desired_active, d.desired_warm, d.panic
        ):
            self.event("decision", p.name, desired_active=d.desired_active,
                       desired_warm=d.desired_warm, panic=d.panic, reason=d.reason,
                       active=view.active, warm=view.warm)
        actions = plan(d.desired_active, d.desired_warm, [self._view(r) for r in mine])
        return self._apply(p, actions, {r.id: r for r in mine}, used)

    # ---- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.event("controller_start", replicas_adopted=len(self.runtime.list()))
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:  # one bad tick must not end the loop
                log.exception("tick failed")
                self.event("tick_error")
            delay = self.cfg.tick_s - (time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(delay, 0.05))

    async def shutdown_replicas(self) -> None:
        """Stop every replica; one that fails to stop must not leave the others running."""
        await asyncio.gather(*self._removals, return_exceptions=True)
        reps = self.runtime.list()
        results = await asyncio.gather(*(asyncio.to_thread(self.runtime.remove, r.id) for r in reps),
                                       return_exceptions=True)
        for r, res in zip(reps, results, strict=True):
            if isinstance(res, BaseException):
                log.error("could not stop replica %s: %s", r.id, res)

    # ---- status --------------------------------------------------------------------------

    def gpu_status(self) -> dict[str, Any]:
        topo = self.placer.topo
        holders = {g: r.id for r in self.replicas for g in r.gpus}
        return {
            "source": topo.source,
            "devices": [
                {"index": g.index, "id": g.id, "name": g.name, "memory_mb": g.memory_mb,
                 "numa": list(g.numa), "held_by": holders.get(g.id), "cordoned": self.placer.cordoned.get(g.id)}
                for g in topo.gpus
            ],
        }

    def status(self) -> dict[str, Any]:
        pools: dict[str, Any] = {}
        for p in self.cfg.pools:
            st = self.pools[p.name]
            d = st.decision
            sig = st.signals[-1] if st.signals else None
            pools[p.name] = {
                "model": p.model,
                "desired_active": d.desired_active if d else None,
                "desired_warm": d.desired_warm if d else None,
                "panic": d.panic if d else False,
                "reason": d.reason if d else None,
                "no_capacity": st.no_capacity,
                "signals": None if sig is None else {
                    "ready": sig.ready, "running": sig.running, "waiting": sig.waiting,
                    "kv_cache_usage": round(sig.kv_usage, 4), "ttft_p95_s": sig.ttft_p95_s,
                    "request_rate": sig.request_rate,
                },
                "replicas": [
                    {
                        "id": r.id, "role": r.role, "target_role": r.target_role,
                        "ready": bool(self.health.get(r.id) and self.health[r.id].ready),
                        "gpus": list(r.gpus), "url": r.url, "upstream": r.upstream,
                        "created_at": r.created_at, "role_since": r.role_since,
                        "load": self.load(r.id),
                    }
                    for r in self.replicas if r.pool == p.name
                ],
            }
        g = self.gateway.stats
        return {
            "gpus": self.gpu_status(),
            "time": self.clock(),
            "runtime": self.runtime.name,
            "ticks": self.ticks,
            "pools": pools,
            "gateway": {"reloads": g.reloads, "errors": g.render_errors, "last_error": g.last_error,
                        "last_reload_at": g.last_reload_at, "last_reload_s": g.last_reload_s},
            "events": list(self.events)[-200:],
        }

"""The control loop, once a tick: the Observer (loop/observe.py) → `reconcile` (pure, loop/reconcile.py) → the
Actuator (loop/actuate.py), the Recorder (loop/record.py) keeping what happened. This module wires them and
holds what only the live loop has: the tick's pacing and wake-ups, NVML health checks and GPU readings off
the tick, the engines' sleep-mode calls, Prometheus' targets, nginx's reload callbacks.

Every runtime and gateway call runs in a thread, so a slow Docker daemon or `nginx -t` never stalls scrapes or
/status. What is kept here in memory (metric samples, pool states) is rebuilt from the replicas after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import httpx

from autoscaler.backend_auth import BackendKeys
from autoscaler.config import FleetConfig
from autoscaler.engines import Engine
from autoscaler.gateway.nginx import Gateway
from autoscaler.gateway.render import PoolRoute
from autoscaler.gpus.telemetry import GpuReading, SlotLoad, simulated_readings
from autoscaler.gpus.topology import Topology
from autoscaler.loop.actions import Action
from autoscaler.loop.actuate import Actuator, ThreadExecutor
from autoscaler.loop.observe import Observer, ReplicaHealth
from autoscaler.loop.reconcile import reconcile
from autoscaler.loop.record import STATUS_EVENTS, Recorder, build_status, gpu_status
from autoscaler.loop.snapshot import GpuView, PoolState, Reconciled, Snapshot
from autoscaler.runtime.base import Replica, Runtime
from autoscaler.status import FleetStatus, GatewayStatus, ReplicaStatus

log = logging.getLogger("gpufleet.controller")

GPU_HEALTH_EVERY = 10  # ticks between NVML health checks
TELEMETRY_EVERY = 2  # ticks between GPU readings (Prometheus scrapes every 5 s)


class Placer(Protocol):
    topo: Topology
    cordoned: dict[str, str]
    host_cpus: set[int]
    nvml: Any | None  # the pynvml module where GPUs are real

    @property
    def virtual(self) -> bool: ...

    @property
    def reads_gpus(self) -> bool: ...

    def readings(self) -> list[GpuReading]: ...

    def failing(self) -> dict[str, str]: ...

    def cordon(self, gpu_id: str, reason: str) -> None: ...


class Controller:
    def __init__(
        self,
        cfg: FleetConfig,
        runtime: Runtime,
        gateway: Gateway,
        placer: Placer,
        targets: Any | None = None,
        clock: Callable[[], float] = time.time,
        activator: Any | None = None,
        keys: BackendKeys | None = None,
    ) -> None:
        self.activator = activator  # autoscaler.activator.Activator: held requests, serving replicas
        self.cfg = cfg
        self.runtime = runtime
        self.gateway = gateway
        self.placer = placer
        self.targets = targets
        self.clock = clock
        self.states: dict[str, PoolState] = {p.name: PoolState() for p in cfg.pools}
        # the event log, the counters since start (events, scale decisions, GPU-seconds by pool and role)
        self.recorder = Recorder(clock, log=log)
        self.ticks = 0
        self.tick_errors = 0
        self.tick_seconds: deque[float] = deque(maxlen=100)
        self.last_tick_at: float | None = None  # wall clock at the end of the last tick, failed or not
        self.gpu_readings: list[GpuReading] = []  # for /metrics: the GPUs' last readings
        self._accounted_at: float | None = None  # monotonic
        self._telemetry: asyncio.Task[None] | None = None
        self._gpu_check: asyncio.Task[None] | None = None  # the NVML health check, off the tick
        self._routed: frozenset[str] = frozenset()  # replica ids in the config nginx last loaded
        self._wake = asyncio.Event()  # a request is held for a pool at zero: tick now
        if activator is not None:
            activator.notify = self.wake
        self.executor = ThreadExecutor()
        self.actuator = Actuator(runtime, gateway, self.recorder, self.executor, clock,
                                 publish_routes=self._publish_routes if activator is not None else None,
                                 sleeper=self._sleep_or_wake, forget=self._forget)
        self.observer = Observer(cfg, runtime, clock, self._gpu_view, self.actuator.busy, self._resume_stop,
                                 keys=keys)
        gateway.on_reload.append(self._on_reload)

    def wake(self, pool: str | None = None) -> None:
        self._wake.set()

    async def close(self) -> None:
        await self.observer.close()

    # ---- observe: the Observer, with what the other parts know --------------------------------

    @property
    def health(self) -> dict[str, ReplicaHealth]:
        return self.observer.health

    @property
    def replicas(self) -> list[Replica]:
        return self.observer.replicas

    @replicas.setter
    def replicas(self, reps: list[Replica]) -> None:
        self.observer.replicas = reps

    def engine(self, pool: str) -> Engine:
        return self.observer.engine(pool)

    def load(self, rid: str) -> float:
        return self.observer.load(rid)

    def _stopping(self, r: Replica) -> bool:
        return self.observer.stopping(r)

    def _gpu_view(self) -> GpuView:
        p = self.placer
        return GpuView(p.topo, frozenset(p.cordoned), None if p.virtual else frozenset(p.host_cpus))

    def _resume_stop(self, r: Replica) -> None:
        """A removal a previous autoscaler began: finish it."""
        self.actuator.stop(Action("stop", r.pool, r.id, reason="a removal begun before a restart"), "stop_resumed")

    async def observe(self) -> Snapshot:
        return await self.observer.observe(
            self._routed, self.gateway.pending, self.activator.held if self.activator is not None else {},
            self.actuator.take_start_failures())

    @property
    def events(self) -> deque[dict[str, Any]]:
        return self.recorder.events

    def event(self, kind: str, pool: str | None = None, **detail: Any) -> None:
        self.recorder.event(kind, pool, **detail)

    # ---- act: the Actuator, with what only the live loop has -------------------------------

    def _forget(self, rid: str) -> None:
        self.health.pop(rid, None)

    async def _sleep_or_wake(self, rid: str, kind: str) -> None:
        """POST /sleep or /wake_up (waking takes seconds); the next scrape sees it."""
        r = next((x for x in self.replicas if x.id == rid), None)
        if r is None:
            return
        path = "/sleep?level=1" if kind == "sleep" else "/wake_up"
        try:
            resp = await self.observer.http.post(f"{r.url}{path}", timeout=120, headers=self.observer.auth(r))
            if resp.status_code == 200:
                self.health.setdefault(r.id, ReplicaHealth()).sleeping = kind == "sleep"
            else:
                log.warning("%s %s answered %s", path, r.id, resp.status_code)
        except httpx.HTTPError as e:
            log.warning("%s %s failed: %s", path, r.id, e)
        finally:
            self._wake.set()  # a woken replica can be activated now

    def _publish_routes(self, routes: Sequence[PoolRoute]) -> None:
        """Held requests go to a ready replica now, not after the reload."""
        assert self.activator is not None
        self.activator.publish({p.name: [f"http://{s}" for s in p.servers] for p in routes},
                               {f"http://{s}": rid for p in routes for s, rid in zip(p.servers, p.replica_ids,
                                                                                      strict=False)})

    async def act(self, out: Reconciled) -> None:
        await self.actuator.apply(out)
        if out.actions:
            self.replicas = await asyncio.to_thread(self.runtime.list)
        if self.targets is not None:
            try:
                await asyncio.to_thread(self.targets.write, self.replicas)
            except Exception as e:  # Prometheus' view can wait a tick; the fleet cannot
                log.error("writing Prometheus targets failed: %s", e)

    def _on_reload(self, tag: object) -> None:
        """nginx now routes exactly `tag`'s replicas: record who joined (warm activation ends here) and left."""
        new = frozenset(tag) if isinstance(tag, frozenset) else frozenset()
        pools = {r.id: r.pool for r in self.replicas}
        for rid in sorted(new - self._routed):
            self.event("routed", pools.get(rid), replica=rid,
                       reload_s=round(self.gateway.stats.last_reload_s or 0, 4))
        for rid in sorted(self._routed - new):
            self.event("unrouted", pools.get(rid), replica=rid)
        self._routed = new

    async def tick(self) -> None:
        t0 = time.monotonic()
        if self.ticks % GPU_HEALTH_EVERY == 0:
            self.schedule_gpu_check()
        snap = await self.observe()
        self._account_gpu_time()
        if self.ticks % TELEMETRY_EVERY == 0:
            self.schedule_gpu_reading()
        out = reconcile(self.cfg, snap, self.states, snap.now)
        self.states = dict(out.states)
        await self.act(out)
        self.ticks += 1
        self.tick_seconds.append(time.monotonic() - t0)

    def _account_gpu_time(self) -> None:
        """GPU-seconds since the last tick, charged to the (pool, role) of the replica holding each GPU."""
        now = time.monotonic()
        dt, self._accounted_at = (now - self._accounted_at if self._accounted_at is not None else 0.0), now
        self.recorder.account(dt, self.replicas, (g.id for g in self.placer.topo.gpus), self.placer.cordoned)

    def schedule_gpu_check(self) -> None:
        if self._gpu_check is None or self._gpu_check.done():
            self._gpu_check = asyncio.get_running_loop().create_task(self._check_gpus())

    async def _check_gpus(self) -> None:
        """NVML in a thread, off the tick (a GPU falling off the bus can hang the call); the cordon itself
        is made here, on the loop, between ticks, so a tick never sees the set change under it."""
        try:
            new = await asyncio.to_thread(self.placer.failing)
        except Exception as e:  # NVML itself failing: the next check tries again
            log.warning("GPU health check failed: %s", e)
            return
        for gid, why in new.items():
            self.placer.cordon(gid, why)
            self.event("cordon", gpu=gid, reason=why)

    def schedule_gpu_reading(self) -> None:
        """Read the GPUs off the tick: an NVML call that hangs (a GPU falling off the bus can do that) holds
        one thread and stops the readings, never the control loop. One read in flight at a time."""
        if self._telemetry is None or self._telemetry.done():
            self._telemetry = asyncio.get_running_loop().create_task(self._read_gpus())

    async def _read_gpus(self) -> None:
        """NVML where GPUs are real (a thread: it is a blocking C library), else the sim replicas' load."""
        topo = self.placer.topo
        try:
            if self.placer.reads_gpus:
                self.gpu_readings = await asyncio.to_thread(self.placer.readings)
            else:  # virtual slots or a topology file: the sim replicas' load stands in, labelled simulated
                load: dict[str, SlotLoad] = {}
                for r in self.replicas:
                    h = self.health.get(r.id)
                    if not r.gpus or h is None or not h.samples:
                        continue
                    s = h.samples[-1]
                    for g in r.gpus:
                        load[g] = SlotLoad(s.sim_gpu_memory_bytes / len(r.gpus), s.running, s.kv_usage)
                self.gpu_readings = simulated_readings(topo, load)
        except Exception as e:  # dashboards can miss a reading; the control loop must not
            log.warning("reading GPU telemetry failed: %s", e)

    # ---- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        adopted = await asyncio.to_thread(self.runtime.list)
        self.event("controller_start", replicas_adopted=len(adopted))
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.tick()
            except Exception as e:  # one bad tick must not end the loop
                log.exception("tick failed")
                self.tick_errors += 1
                self.event("tick_error", reason=f"{type(e).__name__}: {e}")
            self.last_tick_at = self.clock()
            delay = self.cfg.tick_s - (time.monotonic() - started)
            if not self._wake.is_set():
                waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
                _, pending = await asyncio.wait(waits, timeout=max(delay, 0.05),
                                                return_when=asyncio.FIRST_COMPLETED)
                for w in pending:
                    w.cancel()
            self._wake.clear()

    async def shutdown_replicas(self) -> None:
        """Stop every replica; one that fails to stop must not leave the others running."""
        await asyncio.gather(*self.executor.tasks, return_exceptions=True)
        reps = await asyncio.to_thread(self.runtime.list)
        results = await asyncio.gather(*(asyncio.to_thread(self.runtime.remove, r.id) for r in reps),
                                       return_exceptions=True)
        for r, res in zip(reps, results, strict=True):
            if isinstance(res, BaseException):
                log.error("could not stop replica %s: %s", r.id, res)

    # ---- status --------------------------------------------------------------------------

    def status(self) -> FleetStatus:
        def shown(r: Replica) -> ReplicaStatus:
            h = self.health.get(r.id)
            return ReplicaStatus(id=r.id, role=r.role, target_role=r.target_role, ready=bool(h and h.ready),
                                 gpus=list(r.gpus), url=r.url, upstream=r.upstream, created_at=r.created_at,
                                 role_since=r.role_since, load=self.load(r.id), sleeping=bool(h and h.sleeping))

        g = self.gateway.stats
        auth, api_keys = self.gateway.access_summary()
        return build_status(
            self.cfg, self.states, self.engine, [(r.pool, shown(r)) for r in self.replicas if not self._stopping(r)],
            now=self.clock(), runtime=self.runtime.name, ticks=self.ticks,
            gpus=gpu_status(self.placer.topo, self.placer.cordoned, {g: r.id for r in self.replicas for g in r.gpus}),
            gateway=GatewayStatus(reloads=g.reloads, errors=g.render_errors, last_error=g.last_error,
                                  last_reload_at=g.last_reload_at, last_reload_s=g.last_reload_s,
                                  auth=auth, api_keys=api_keys),
            events=list(self.recorder.events)[-STATUS_EVENTS:],
            held=dict(self.activator.held) if self.activator is not None else {},
            last_tick_at=self.last_tick_at, last_tick_s=self.tick_seconds[-1] if self.tick_seconds else None,
            tick_errors=self.tick_errors,
        )

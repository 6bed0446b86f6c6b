"""The control loop: observe → reconcile → act, once a tick.

Observe lists the replicas from the runtime (the source of truth) and scrapes
each one into an immutable snapshot; `reconcile` (pure) decides everything;
act applies its actions in order: role changes written to the runtime first,
then the routes, then the slow part (starting and stopping replicas). Every
runtime and gateway call runs in a thread, so a slow Docker daemon or `nginx -t`
never stalls scrapes or /status. What is kept here in memory (metric samples,
pool states) is rebuilt from the replicas after a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from autoscaler.config import FleetConfig, parse_config
from autoscaler.engines import Engine
from autoscaler.gateway.nginx import Gateway
from autoscaler.gateway.render import PoolRoute
from autoscaler.gpus.telemetry import GpuReading, SlotLoad, simulated_readings
from autoscaler.gpus.topology import Topology
from autoscaler.loop.actions import Action
from autoscaler.loop.actuate import Actuator, ThreadExecutor
from autoscaler.loop.reconcile import (
    GpuView,
    PoolState,
    Reconciled,
    ReplicaObs,
    Snapshot,
    reconcile,
)
from autoscaler.loop.record import STATUS_EVENTS, Recorder, build_status, gpu_status
from autoscaler.loop.signals import ReplicaSample, parse_metrics
from autoscaler.runtime.base import Replica, Runtime
from autoscaler.status import FleetStatus, GatewayStatus, ReplicaStatus

log = logging.getLogger("gpufleet.controller")

# how a replica of a pool that is no longer configured is read: the sim engine's (vLLM's) contract
PRESET_FALLBACK = parse_config({"pools": [{"name": "x", "model": "x"}]}).pools[0].engine_spec
GPU_HEALTH_EVERY = 10  # ticks between NVML health checks
TELEMETRY_EVERY = 2  # ticks between GPU readings (Prometheus scrapes every 5 s)
SAMPLES_KEPT = 16  # per replica: enough for any metric window at a 1 s tick
METRICS_MAX_BYTES = 4 << 20  # a /metrics larger than this is garbage, not a replica's signals


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


@dataclass
class ReplicaHealth:
    samples: deque[ReplicaSample] = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))
    ready: bool = False
    failures: int = 0
    last_error: str | None = None
    sleeping: bool = False  # warm replicas: GET /is_sleeping


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
    ) -> None:
        self.activator = activator  # autoscaler.activator.Activator: held requests, serving replicas
        self.cfg = cfg
        self.runtime = runtime
        self.gateway = gateway
        self.placer = placer
        self.targets = targets
        self.clock = clock
        self.health: dict[str, ReplicaHealth] = {}
        self.states: dict[str, PoolState] = {p.name: PoolState() for p in cfg.pools}
        # the event log, the counters since start (events, scale decisions, GPU-seconds by pool and role)
        self.recorder = Recorder(clock)
        self.replicas: list[Replica] = []
        self.ticks = 0
        self.tick_errors = 0
        self.tick_seconds: deque[float] = deque(maxlen=100)
        self.last_tick_at: float | None = None  # wall clock at the end of the last tick, failed or not
        self.gpu_readings: list[GpuReading] = []  # for /metrics: the GPUs' last readings
        self._accounted_at: float | None = None  # monotonic
        self._telemetry: asyncio.Task[None] | None = None
        self._gpu_check: asyncio.Task[None] | None = None  # the NVML health check, off the tick
        self._http = httpx.AsyncClient(timeout=cfg.scrape_timeout_s)
        self._routed: frozenset[str] = frozenset()  # replica ids in the config nginx last loaded
        self._wake = asyncio.Event()  # a request is held for a pool at zero: tick now
        if activator is not None:
            activator.notify = self.wake
        self.executor = ThreadExecutor()
        self.actuator = Actuator(runtime, gateway, self.recorder, self.executor, clock,
                                 publish_routes=self._publish_routes if activator is not None else None,
                                 sleeper=self._sleep_or_wake, forget=self._forget)
        self._probes: dict[str, asyncio.Task[None]] = {}  # readiness probes in flight, by replica
        self.engines: dict[str, Engine] = {p.name: p.engine_spec for p in cfg.pools}
        gateway.on_reload.append(self._on_reload)

    def wake(self, pool: str | None = None) -> None:
        self._wake.set()

    async def close(self) -> None:
        await self._http.aclose()

    @property
    def events(self) -> deque[dict[str, Any]]:
        return self.recorder.events

    def event(self, kind: str, pool: str | None = None, **detail: Any) -> None:
        self.recorder.event(kind, pool, **detail)
        log.info("%s %s %s", kind, pool or "", detail)

    # ---- observe -------------------------------------------------------------------------

    async def _get(self, url: str, timeout: float | None = None) -> tuple[int, str]:
        async with self._http.stream("GET", url, timeout=timeout or httpx.USE_CLIENT_DEFAULT) as resp:
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > METRICS_MAX_BYTES:
                    raise ValueError(f"{url}: more than {METRICS_MAX_BYTES} bytes")
            return resp.status_code, body.decode("utf-8", errors="replace")

    def engine(self, pool: str) -> Engine:
        """The pool's engine; a replica of a pool no longer in the config is read as the sim engine is."""
        return self.engines.get(pool) or self.engines.setdefault(pool, PRESET_FALLBACK)

    async def _probe_ready(self, r: Replica, h: ReplicaHealth) -> None:
        """A loading replica's own readiness contract (vLLM: GET /health 200, which it answers only once loaded;
        llama.cpp: 503 until loaded; SGLang: a one-token generation that takes a second or more). The probe
        runs off the tick with the engine's deadline, one at a time per replica; the tick waits for it no
        longer than a scrape, so a slow probe never holds the loop, and its answer counts the tick it comes."""
        task = self._probes.get(r.id)
        if task is None or task.done():
            eng = self.engine(r.pool)

            async def probe() -> None:
                try:
                    code, _ = await asyncio.wait_for(self._get(f"{r.url}{eng.ready_path}", eng.ready_timeout_s),
                                                     eng.ready_timeout_s)
                    h.ready = code == 200
                    h.last_error = None if h.ready else f"{eng.ready_path} answered {code}"
                except Exception as e:  # not listening yet (vLLM binds its port once loaded), a timeout, ...
                    h.ready = False
                    h.last_error = f"{eng.ready_path}: {type(e).__name__}: {e}" if str(e) else \
                        f"{eng.ready_path}: {type(e).__name__}"

            task = self._probes[r.id] = asyncio.get_running_loop().create_task(probe())
        await asyncio.wait({task}, timeout=self.cfg.scrape_timeout_s)

    async def _scrape_once(self, r: Replica, h: ReplicaHealth) -> None:
        eng = self.engine(r.pool)
        if r.role == "warm" and eng.sleep:
            code, text = await self._get(f"{r.url}/is_sleeping")
            # an engine without sleep mode (404) is awake
            h.sleeping = code == 200 and json.loads(text).get("is_sleeping") is True
        code, text = await self._get(f"{r.url}/metrics")
        if code != 200:
            raise ValueError(f"/metrics answered {code}")
        h.samples.append(parse_metrics(text, self.clock(), eng.metrics))
        h.ready = True
        h.failures = 0
        h.last_error = None

    async def _scrape(self, r: Replica) -> None:
        """One replica's scrape, bounded as a whole: a replica that drips its answer byte by byte or sends
        garbage fails its own health check and delays no one. A loading one is probed for readiness first."""
        h = self.health.setdefault(r.id, ReplicaHealth())
        if r.role == "starting":
            await self._probe_ready(r, h)
            if not h.ready:
                return
        try:
            await asyncio.wait_for(self._scrape_once(r, h), timeout=self.cfg.scrape_timeout_s)
        except Exception as e:
            h.failures += 1
            h.last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if r.role != "starting":
                h.ready = h.failures < self.cfg.unhealthy_after

    async def observe(self) -> Snapshot:
        reps = await asyncio.to_thread(self.runtime.list)
        for r in reps:
            if r.stopping and r.id not in self.actuator.busy:  # a removal a previous autoscaler began: finish it
                self.actuator.stop(Action("stop", r.pool, r.id, reason="a removal begun before a restart"),
                                   "stop_resumed")
        await asyncio.gather(*(self._scrape(r) for r in reps if r.alive and not self._stopping(r)))
        ids = {r.id for r in reps}
        for rid in list(self.health):
            if rid not in ids and rid not in self.actuator.busy:
                del self.health[rid]
        for rid in [rid for rid in self._probes if rid not in ids or self._probes[rid].done()]:
            task = self._probes.pop(rid)
            if not task.done():
                task.cancel()
        self.replicas = reps
        now = self.clock()
        p = self.placer
        return Snapshot(
            now=now,
            replicas=tuple(self._obs(r) for r in reps),
            gpus=GpuView(p.topo, frozenset(p.cordoned), None if p.virtual else frozenset(p.host_cpus)),
            routed=self._routed,
            gateway_pending=self.gateway.pending,
            held=dict(self.activator.held) if self.activator is not None else {},
            start_failures=self.actuator.take_start_failures(),
        )

    def _obs(self, r: Replica) -> ReplicaObs:
        h = self.health.get(r.id) or ReplicaHealth()
        return ReplicaObs(
            id=r.id, pool=r.pool, role=r.role, target_role=r.target_role, created_at=r.created_at,
            role_since=r.role_since, alive=r.alive, ready=h.ready, failures=h.failures,
            last_error=h.last_error, gpus=r.gpus, config_hash=r.config_hash, upstream=r.upstream,
            samples=tuple(h.samples), stopping=self._stopping(r), sleeping=h.sleeping,
            claimed_for=r.claimed_for,
        )

    def _stopping(self, r: Replica) -> bool:
        return r.stopping or r.id in self.actuator.busy

    def load(self, rid: str) -> float:
        h = self.health.get(rid)
        if not h or not h.samples:
            return 0.0
        s = h.samples[-1]
        return s.running + s.waiting

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
            resp = await self._http.post(f"{r.url}{path}", timeout=120)
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

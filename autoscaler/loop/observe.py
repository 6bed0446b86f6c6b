"""Observe: the fleet as it is, into one immutable Snapshot. The runtime is the truth for which replicas exist
and in which role; each live replica is scraped (its /metrics, vLLM's names or its engine's) or, while it
loads, probed by its engine's own readiness contract; what the other parts know (the routes nginx serves, the
requests the activator holds, the starts the runtime refused) comes in as arguments.

The I/O side of the loop: scrapes and probes run concurrently, each bounded, off the tick where they may be
slow, so one replica that hangs or sends garbage delays no one."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from autoscaler.backend_auth import BackendKeys, auth_headers
from autoscaler.config import FleetConfig, parse_config
from autoscaler.engines import Engine
from autoscaler.loop.actions import StartFailure
from autoscaler.loop.signals import ReplicaSample, parse_metrics
from autoscaler.loop.snapshot import GpuView, ReplicaObs, Snapshot
from autoscaler.runtime.base import Replica, Runtime

# how a replica of a pool that is no longer configured is read: the sim engine's (vLLM's) contract
PRESET_FALLBACK = parse_config({"pools": [{"name": "x", "model": "x"}]}).pools[0].engine_spec
SAMPLES_KEPT = 16  # per replica: enough for any metric window at a 1 s tick
METRICS_MAX_BYTES = 4 << 20  # a /metrics larger than this is garbage, not a replica's signals


@dataclass
class ReplicaHealth:
    samples: deque[ReplicaSample] = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))
    ready: bool = False
    failures: int = 0
    last_error: str | None = None
    sleeping: bool = False  # warm replicas: GET /is_sleeping


class Observer:
    def __init__(self, cfg: FleetConfig, runtime: Runtime, clock: Callable[[], float],
                 gpus: Callable[[], GpuView], busy: set[str], resume_stop: Callable[[Replica], None],
                 keys: BackendKeys | None = None) -> None:
        """gpus: the GPUs as placement sees them now; busy: the replicas the actuator is removing (not scraped,
        shown as stopping); resume_stop: a removal a previous autoscaler began, to finish; keys: what replicas
        demand (each pool's key is shown to its replicas)."""
        self.cfg = cfg
        self.keys = keys
        self.runtime = runtime
        self.clock = clock
        self.gpus = gpus
        self.busy = busy
        self.resume_stop = resume_stop
        self.health: dict[str, ReplicaHealth] = {}
        self.replicas: list[Replica] = []  # as the last observe (or act) listed them
        self.engines: dict[str, Engine] = {p.name: p.engine_spec for p in cfg.pools}
        self.http = httpx.AsyncClient(timeout=cfg.scrape_timeout_s)
        self._probes: dict[str, asyncio.Task[None]] = {}  # readiness probes in flight, by replica

    async def close(self) -> None:
        await self.http.aclose()

    def auth(self, r: Replica) -> dict[str, str]:
        return auth_headers(self.keys, r.pool)

    async def _get(self, url: str, timeout: float | None = None,
                   headers: Mapping[str, str] | None = None) -> tuple[int, str]:
        async with self.http.stream("GET", url, timeout=timeout or httpx.USE_CLIENT_DEFAULT,
                                    headers=headers) as resp:
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
                    code, _ = await asyncio.wait_for(
                        self._get(f"{r.url}{eng.ready_path}", eng.ready_timeout_s, self.auth(r)), eng.ready_timeout_s)
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
            code, text = await self._get(f"{r.url}/is_sleeping", headers=self.auth(r))
            # an engine without sleep mode (404) is awake
            h.sleeping = code == 200 and json.loads(text).get("is_sleeping") is True
        code, text = await self._get(f"{r.url}/metrics", headers=self.auth(r))
        if code != 200:
            raise ValueError(f"/metrics answered {code}")
        h.samples.append(parse_metrics(text, self.clock(), eng.metrics))
        h.ready = True
        h.failures = 0
        h.last_error = None

    async def scrape(self, r: Replica) -> None:
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

    async def observe(self, routed: frozenset[str], gateway_pending: bool, held: Mapping[str, int],
                      start_failures: tuple[StartFailure, ...]) -> Snapshot:
        """List the replicas (the runtime is the truth), finish removals a previous autoscaler began, scrape or
        probe every other live one, concurrently and each bounded; then the Snapshot reconcile decides on."""
        reps = await asyncio.to_thread(self.runtime.list)
        for r in reps:
            if r.stopping and r.id not in self.busy:
                self.resume_stop(r)
        await asyncio.gather(*(self.scrape(r) for r in reps if r.alive and not self.stopping(r)))
        ids = {r.id for r in reps}
        for rid in list(self.health):
            if rid not in ids and rid not in self.busy:
                del self.health[rid]
        for rid in [rid for rid in self._probes if rid not in ids or self._probes[rid].done()]:
            task = self._probes.pop(rid)
            if not task.done():
                task.cancel()
        self.replicas = reps
        return Snapshot(now=self.clock(), replicas=tuple(self._obs(r) for r in reps), gpus=self.gpus(),
                        routed=routed, gateway_pending=gateway_pending, held=dict(held),
                        start_failures=start_failures)

    def _obs(self, r: Replica) -> ReplicaObs:
        h = self.health.get(r.id) or ReplicaHealth()
        return ReplicaObs(
            id=r.id, pool=r.pool, role=r.role, target_role=r.target_role, created_at=r.created_at,
            role_since=r.role_since, alive=r.alive, ready=h.ready, failures=h.failures,
            last_error=h.last_error, gpus=r.gpus, config_hash=r.config_hash, upstream=r.upstream,
            samples=tuple(h.samples), stopping=self.stopping(r), sleeping=h.sleeping,
            claimed_for=r.claimed_for,
        )

    def stopping(self, r: Replica) -> bool:
        return r.stopping or r.id in self.busy

    def load(self, rid: str) -> float:
        h = self.health.get(rid)
        if not h or not h.samples:
            return 0.0
        s = h.samples[-1]
        return s.running + s.waiting

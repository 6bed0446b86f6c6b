"""What the loop did, told to people and dashboards: the event log, counters since start, GPU-seconds, and the
one `/status` builder that the live controller and the simulator both use.

Pure apart from the Recorder's own counters: the clock is passed in, nothing here does I/O."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from autoscaler.config import FleetConfig, PoolConfig
from autoscaler.engines import Engine
from autoscaler.gpus.topology import Topology
from autoscaler.loop.actions import Event
from autoscaler.loop.snapshot import PoolState
from autoscaler.status import (
    ClaimStatus,
    EngineStatus,
    EventStatus,
    FleetStatus,
    GatewayStatus,
    GpuDevice,
    GpuStatus,
    PoolStatus,
    ReplicaStatus,
    SignalsStatus,
)

EVENTS_KEPT = 1000  # the event log in memory; /status shows the newest STATUS_EVENTS
STATUS_EVENTS = 200


class Holder(Protocol):
    """A replica as far as GPU time goes: whose GPUs, in which role."""

    @property
    def pool(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def gpus(self) -> tuple[str, ...]: ...


class Recorder:
    """The event log and the counters /metrics exports (they only go up, from the process' start)."""

    def __init__(self, clock: Callable[[], float], keep: int | None = EVENTS_KEPT,
                 log: logging.Logger | None = None) -> None:
        """keep: how many events the log holds (None: all, as the simulator keeps them); log: where each event
        is also written, for people reading the process' output (the live loop; not the simulator)."""
        self.clock = clock
        self.log = log
        self.events: deque[dict[str, Any]] = deque(maxlen=keep)
        self.event_counts: Counter[tuple[str, str]] = Counter()  # (kind, pool)
        self.decisions: Counter[tuple[str, str, str]] = Counter()  # (pool, direction, driver)
        self.gpu_seconds: defaultdict[tuple[str, str], float] = defaultdict(float)  # (pool, role)
        self.idle_gpu_seconds = 0.0

    def event(self, kind: str, pool: str | None = None, **detail: Any) -> dict[str, Any]:
        e = {"t": self.clock(), "kind": kind, "pool": pool, **detail}
        self.events.append(e)
        self.event_counts[(kind, pool or "")] += 1
        if self.log is not None:
            self.log.info("%s %s %s", kind, pool or "", detail, extra={"gf_event": e})
        return e

    def record(self, events: Iterable[Event]) -> None:
        """A tick's events from reconcile; a decision also counts by direction and driver."""
        for e in events:
            self.event(e.kind, e.pool, **e.detail)
            if e.kind == "decision":
                self.decisions[(e.pool or "", str(e.detail.get("direction")), str(e.detail.get("driver")))] += 1

    def account(self, dt: float, replicas: Iterable[Holder], gpu_ids: Iterable[str], cordoned: Iterable[str]) -> None:
        """dt seconds of GPU time: each held GPU to its replica's (pool, role), the rest (not cordoned) idle."""
        if dt <= 0:
            return
        held: set[str] = set()
        for r in replicas:
            if r.gpus:
                self.gpu_seconds[(r.pool, r.role)] += dt * len(r.gpus)
                held.update(r.gpus)
        off = set(cordoned)
        self.idle_gpu_seconds += dt * sum(1 for g in gpu_ids if g not in held and g not in off)


def gpu_status(topo: Topology, cordoned: Mapping[str, str], holders: Mapping[str, str]) -> GpuStatus:
    """Each GPU, who holds it (GPU id → replica id) and why it is cordoned."""
    return GpuStatus(source=topo.source, devices=[
        GpuDevice(index=g.index, id=g.id, name=g.name, memory_mb=g.memory_mb, numa=list(g.numa),
                  held_by=holders.get(g.id), cordoned=cordoned.get(g.id))
        for g in topo.gpus
    ])


def pool_status(p: PoolConfig, st: PoolState, eng: Engine, replicas: list[ReplicaStatus], held: int,
                now: float) -> PoolStatus:
    d = st.decision
    sig = st.signals[-1] if st.signals else None
    missing = set(eng.missing_signals())
    backing_off = st.backoff_until > now
    return PoolStatus(
        model=p.model,
        engine=EngineStatus(name=eng.name, image=eng.image, ready_path=eng.ready_path, sleep=eng.sleep,
                            start_timeout_s=eng.start_timeout_s, missing_signals=sorted(missing)),
        desired_active=d.desired_active if d else None,
        desired_warm=d.desired_warm if d else None,
        panic=d.panic if d else False,
        reason=d.reason if d else None,
        no_capacity=st.no_capacity,
        crashes=st.crashes,
        backoff_until=st.backoff_until if backing_off else None,
        backoff_reason=st.backoff_reason if backing_off else None,
        error=st.error,
        held=held,
        priority=p.priority,
        unmet=st.unmet,
        saturated=st.saturation.saturated,
        claims=[ClaimStatus(replica=c.victim, from_pool=c.from_pool, kind=c.kind, gpus=list(c.gpus), since=c.since)
                for c in st.claims.values()],
        signals=None if sig is None else SignalsStatus(
            ready=sig.ready, running=sig.running, waiting=sig.waiting,
            kv_cache_usage=None if "kv_cache_usage" in missing else round(sig.kv_usage, 4),
            ttft_p95_s=sig.ttft_p95_s, request_rate=None if "request_rate" in missing else sig.request_rate),
        replicas=replicas,
    )


def build_status(
    cfg: FleetConfig,
    states: Mapping[str, PoolState],
    engines: Callable[[str], Engine],
    replicas: Sequence[tuple[str, ReplicaStatus]],
    *,
    now: float,
    runtime: str,
    ticks: int,
    gpus: GpuStatus,
    gateway: GatewayStatus,
    events: Iterable[Mapping[str, Any]],
    held: Mapping[str, int] | None = None,
    last_tick_at: float | None = None,
    last_tick_s: float | None = None,
    tick_errors: int = 0,
) -> FleetStatus:
    """`/status`: replicas are (pool, what status shows of it), not stopping; events as the caller keeps them."""
    by_pool: dict[str, list[ReplicaStatus]] = {p.name: [] for p in cfg.pools}
    for pool, r in replicas:
        if pool in by_pool:
            by_pool[pool].append(r)
    held = held or {}
    pools = {p.name: pool_status(p, states.get(p.name, PoolState()), engines(p.name), by_pool[p.name],
                                 held.get(p.name, 0), now)
             for p in cfg.pools}
    return FleetStatus(gpus=gpus, time=now, runtime=runtime, ticks=ticks, pools=pools, last_tick_at=last_tick_at,
                       last_tick_s=last_tick_s, tick_errors=tick_errors, gateway=gateway,
                       events=[EventStatus(**e) for e in events])

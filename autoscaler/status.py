"""`/status` as one typed model: the admin API serves it, `scale-test` and the
tests read it, the simulator writes its timeline in it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from autoscaler.runtime.base import Role


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplicaStatus(_M):
    id: str
    role: Role
    target_role: Role
    ready: bool
    gpus: list[str]
    url: str
    upstream: str
    created_at: float
    role_since: float
    load: float  # running + waiting at the last scrape
    sleeping: bool = False  # sleep mode (warm replicas): weights in host RAM, GPU memory free


class SignalsStatus(_M):
    ready: int
    running: float
    waiting: float
    kv_cache_usage: float | None  # None: the engine exports no KV-cache gauge
    ttft_p95_s: float | None
    request_rate: float | None


class ClaimStatus(_M):
    """GPUs another pool's replica gives up for this one (reclaimed by drain or stop, or moved)."""

    replica: str
    from_pool: str
    kind: str  # reclaim | move
    gpus: list[str]
    since: float


class EngineStatus(_M):
    name: str  # the preset (sim, vllm, sglang, tgi, llamacpp, command)
    image: str | None  # docker: the replica image (None: the stack's own)
    ready_path: str  # the readiness probe: 200 = loaded
    sleep: bool  # vLLM's sleep-mode endpoints
    start_timeout_s: float
    # our signals this engine exports no metric for: no target may use them, and /status shows them null
    missing_signals: list[str] = []


class PoolStatus(_M):
    model: str
    engine: EngineStatus | None = None
    desired_active: int | None
    desired_warm: int | None
    panic: bool
    reason: str | None
    no_capacity: str | None
    crashes: int = 0  # failed starts and crashes in a row (see backoff)
    backoff_until: float | None = None  # no cold start before this (crash loop)
    backoff_reason: str | None = None
    error: str | None = None  # the pool's step raised this last tick
    held: int = 0  # requests the activator holds until a replica serves
    priority: int = 0
    unmet: int = 0  # active replicas wanted and not placeable this tick (no GPUs, even by reclaim)
    saturated: bool = False  # new requests overflow to the fallback pools at the gateway
    claims: list[ClaimStatus] = []  # GPUs promised to this pool by other pools' replicas
    signals: SignalsStatus | None
    replicas: list[ReplicaStatus]


class GpuDevice(_M):
    index: int
    id: str
    name: str
    memory_mb: int
    numa: list[int]
    held_by: str | None
    cordoned: str | None


class GpuStatus(_M):
    source: str
    devices: list[GpuDevice]


class GatewayStatus(_M):
    reloads: int
    errors: int
    last_error: str | None
    last_reload_at: float | None
    last_reload_s: float | None
    auth: bool = True  # API keys checked; False: anyone who reaches the gateway is served
    api_keys: int = 0  # keys in force (names only ever leave the keys file)


class EventStatus(BaseModel):
    """A controller event: when, what, which pool, and the kind's own fields (replica, reason, ...)."""

    model_config = ConfigDict(extra="allow")
    t: float
    kind: str
    pool: str | None = None


class FleetStatus(_M):
    gpus: GpuStatus
    time: float
    runtime: str
    ticks: int
    last_tick_at: float | None = None  # the loop's liveness: end of the last tick
    last_tick_s: float | None = None  # how long it took
    tick_errors: int = 0
    pools: dict[str, PoolStatus]
    gateway: GatewayStatus
    events: list[EventStatus]

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

"""What one tick sees and what it decides, as immutable data: the Snapshot the Observer builds (replicas, GPUs,
what nginx serves, what the activator holds, refused starts), each pool's state between ticks, and the
Reconciled result the Actuator applies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autoscaler.gateway.render import PoolRoute
from autoscaler.gateway.routing import SaturationState
from autoscaler.gpus.topology import Topology
from autoscaler.loop.actions import Action, Event, StartFailure
from autoscaler.loop.arbiter import Claim
from autoscaler.loop.policy import Decision
from autoscaler.loop.signals import PoolSignals, ReplicaSample
from autoscaler.runtime.base import Role


@dataclass(frozen=True)
class ReplicaObs:
    """One replica as observed this tick."""

    id: str
    pool: str
    role: Role
    target_role: Role
    created_at: float
    role_since: float
    alive: bool = True  # process/container running
    ready: bool = False  # its engine's readiness probe answered 200 (loading replicas); scrapes answering (others)
    failures: int = 0  # consecutive failed scrapes
    last_error: str | None = None
    gpus: tuple[str, ...] = ()
    config_hash: str = ""
    upstream: str = ""
    samples: tuple[ReplicaSample, ...] = ()  # recent scrapes, oldest first
    stopping: bool = False  # a removal is in flight
    sleeping: bool = False  # sleep mode: weights offloaded, not able to serve until woken
    claimed_for: str | None = None  # draining: the pool its GPUs are promised to (kept in the runtime)

    @property
    def load(self) -> float:
        if not self.samples:
            return 0.0
        s = self.samples[-1]
        return s.running + s.waiting


@dataclass(frozen=True)
class GpuView:
    topo: Topology
    cordoned: frozenset[str] = frozenset()
    host_cpus: frozenset[int] | None = None  # None: virtual slots, no CPU pinning


@dataclass(frozen=True)
class Snapshot:
    now: float
    replicas: tuple[ReplicaObs, ...]
    gpus: GpuView
    routed: frozenset[str] = frozenset()  # replica ids in the config nginx last loaded
    gateway_pending: bool = False  # a route change waits for its reload
    held: Mapping[str, int] = field(default_factory=dict)  # pool → requests the activator holds
    start_failures: tuple[StartFailure, ...] = ()  # starts the runtime refused since the last tick


@dataclass(frozen=True)
class PoolState:
    """What the loop remembers of a pool between ticks (rebuilt from the fleet after a restart)."""

    policy: Any = None  # the policy's own state (PolicyState for gpufleet's); None: not started
    signals: tuple[PoolSignals, ...] = ()
    decision: Decision[Any] | None = None
    no_capacity: str | None = None
    # draining replica id → when it was first seen out of nginx's config (its drain counts from there)
    unrouted_since: Mapping[str, float] = field(default_factory=dict)
    # crash-loop backoff: consecutive failed starts/crashes, and no cold start before backoff_until
    crashes: int = 0
    last_crash_at: float | None = None
    backoff_until: float = 0.0
    backoff_reason: str | None = None
    error: str | None = None  # the last exception in this pool's step, until a step succeeds
    saturation: SaturationState = SaturationState()  # overflowing to its fallbacks at the gateway
    # GPUs promised to this pool by other pools' replicas (victim id → claim); rebuilt as needed after a
    # restart: a victim then finishes its drain as an ordinary one, and the pool claims again
    claims: Mapping[str, Claim] = field(default_factory=dict)
    unmet: int = 0  # active replicas the pool wants and has no GPUs for this tick


@dataclass(frozen=True)
class Reconciled:
    actions: tuple[Action, ...]
    states: Mapping[str, PoolState]
    routes: tuple[PoolRoute, ...]
    route_ids: frozenset[str]  # the replicas those routes name
    events: tuple[Event, ...] = ()

    @property
    def saturated(self) -> dict[str, bool]:
        """Pool → overflowing to its fallbacks (what the gateway's state file says)."""
        return {name: st.saturation.saturated for name, st in self.states.items()}

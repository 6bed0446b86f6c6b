"""What the loop decides to do, and what it reports: the one `Action` type from the planner to the actuator."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from autoscaler.runtime.base import ReplicaSpec, Role

ActionKind = Literal["stop", "promote", "activate", "retarget", "drain", "demote", "start", "sleep", "wake"]
# the events dashboards draw as annotations: what changed a pool's replicas, and why it had to
SCALE_EVENTS = ("start", "activate", "promote", "drain", "demote", "stop", "sleep", "wake", "panic", "reclaim",
                "move", "crash", "start_failed", "start_timeout")


@dataclass(frozen=True)
class Action:
    """One thing to do. Role changes are written to the runtime first; stops and starts are slow."""

    kind: ActionKind
    pool: str
    replica: str | None = None  # None for start
    role: Role | None = None  # the role it gets (for start: what it becomes once ready)
    target: Role | None = None  # the role a loading replica is retargeted to
    reason: str = ""
    spec: ReplicaSpec | None = None  # start only: reconcile places it
    detail: Mapping[str, Any] = field(default_factory=dict)  # extra event fields
    claimed_for: str | None = None  # drain: the pool its GPUs go to (written with the role)


@dataclass(frozen=True)
class StartFailure:
    """A start the runtime refused (an image missing, a daemon error): the next tick's reconcile counts it."""

    pool: str
    target: Role
    reason: str


@dataclass(frozen=True)
class Event:
    kind: str
    pool: str | None
    detail: Mapping[str, Any] = field(default_factory=dict)

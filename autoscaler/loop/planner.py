"""Decision → ordered actions for one pool. Pure: the controller applies them.

Order matters for "no dropped requests": activate warm replicas first (a
reload, well under a second), then backfill with cold starts; scale down by
draining (out of the upstream first), never by stopping a routed replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autoscaler.loop.actions import Action
from autoscaler.runtime.base import Role


@dataclass(frozen=True)
class ReplicaView:
    id: str
    role: Role
    target_role: Role
    ready: bool
    load: float  # running + waiting at the last scrape
    created_at: float
    role_since: float
    sleeping: bool = False  # a warm replica in sleep mode: activating it means waking it first


def plan(pool: str, desired_active: int, desired_warm: int, replicas: Sequence[ReplicaView]) -> list[Action]:
    """The pool's actions in the order they help most; starts carry no spec yet (reconcile places them)."""
    active = [r for r in replicas if r.role == "active"]
    # awake warm replicas first: they serve after a reload, a sleeper after its wake-up
    warm = sorted((r for r in replicas if r.role == "warm"), key=lambda r: (r.sleeping, r.created_at))
    start_act = sorted((r for r in replicas if r.role == "starting" and r.target_role == "active"),
                       key=lambda r: r.created_at)
    start_warm = sorted((r for r in replicas if r.role == "starting" and r.target_role != "active"),
                        key=lambda r: r.created_at)
    out: list[Action] = []

    need = desired_active - len(active)
    if need > 0:
        for r in warm[:need]:
            out.append(Action("activate", pool, r.id, role="active", reason="scale-up: warm replica first"))
        activated = min(need, len(warm))
        warm = warm[activated:]
        need -= activated
        # Replicas already loading for the warm pool are closer than new ones.
        need -= len(start_act)
        for r in start_warm[: max(need, 0)]:
            out.append(Action("retarget", pool, r.id, role="starting", target="active",
                              reason="scale-up: loading replica will serve"))
        moved = min(max(need, 0), len(start_warm))
        start_warm = start_warm[moved:]
        need -= moved
        for _ in range(max(need, 0)):
            out.append(Action("start", pool, role="active", reason="scale-up: no warm replica left"))
    else:
        surplus = -need
        # Loading replicas were going to add capacity: they go to the warm pool instead.
        for r in start_act:
            out.append(Action("retarget", pool, r.id, role="starting", target="warm",
                              reason="demand fell while loading"))
            start_warm.append(r)
        # Drain the least loaded, newest first: the cheapest to empty.
        victims = sorted(active, key=lambda r: (r.load, -r.created_at))[:surplus]
        for r in victims:
            out.append(Action("drain", pool, r.id, role="draining", reason="scale-down: drain before stop"))

    have_warm = len(warm) + len(start_warm)
    if have_warm < desired_warm:
        for _ in range(desired_warm - have_warm):
            out.append(Action("start", pool, role="warm", reason="refill the warm pool"))
    elif have_warm > desired_warm:
        # Stop what is still loading first, then the newest warm replicas.
        extra = [*reversed(start_warm), *reversed(warm)][: have_warm - desired_warm]
        for r in extra:
            out.append(Action("stop", pool, r.id, reason="warm pool above its size"))
    return out


def drain_finished(r: ReplicaView, now: float, timeout_s: float, settle_s: float) -> str | None:
    """Why a draining replica may go now, or None. `settle_s` covers the gateway reload."""
    since = now - r.role_since
    if since >= timeout_s:
        return f"drain timeout after {since:.0f}s with {r.load:g} requests left"
    if since >= settle_s and r.ready and r.load == 0:
        return "drained: no running or waiting request"
    if since >= settle_s and not r.ready:
        return "drained: replica stopped answering"
    return None

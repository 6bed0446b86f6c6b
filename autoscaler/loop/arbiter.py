"""GPUs between pools: who may take a replica's GPUs from whom, and which replica gives them. Pure.

When a pool's replica cannot be placed, `reconcile` asks, in this order:

1. *claims in flight*: GPUs already promised to the pool (a reclaimed replica still draining) would
   place it: wait, claim nothing more;
2. *reclaim spare*: sleeping, then warm, then warm-bound loading replicas of other pools that the
   rules below allow (they serve nobody: stopped at once);
3. *move*: the free GPUs would do but for fragmentation (a 1-GPU replica sits in the NVLink pair a
   2-GPU replica needs): a smaller replica is re-placed elsewhere — its replacement starts first,
   and only once that serves is the old one drained;
4. *reclaim active*: serving replicas of other pools, by drain, never below their pool's
   `min_replicas`.

Who may take from whom (`p` needs, `q` gives):
- q's priority is lower: yes;
- equal priority: spare replicas yes; an active one only while p, after the move, would still
  have no larger a share of its demand than q (have/desired), so equal pools converge to equal
  shares and never take back and forth;
- q's priority is higher: only while p is below its own `min_replicas` (the guarantee), and never
  below q's.

Every promise is a `Claim` on the taking pool: the GPUs it will get. Other pools do not place on
claimed GPUs, and a claimed replica that finishes its drain is stopped, not kept warm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from autoscaler.gpus.slots import Placement

ClaimKind = Literal["reclaim", "move"]


@dataclass(frozen=True)
class Claim:
    """GPUs promised to a pool: `victim` (of pool `from_pool`) gives them up, `gpus` stay reserved."""

    victim: str
    from_pool: str
    gpus: tuple[str, ...]
    kind: ClaimKind
    since: float


@dataclass(frozen=True)
class Candidate:
    """A replica another pool could give up, as the arbiter sees it."""

    id: str
    pool: str
    role: str  # warm, starting (warm-bound), active
    gpus: tuple[str, ...]
    load: float
    created_at: float
    sleeping: bool = False


@dataclass(frozen=True)
class PoolShare:
    """How much of its demand a pool has: `have` counts what serves or is about to (active + active-bound
    starts), `serving` only what serves now (active and ready): a pool gives up only what leaves it at
    least its minimum *serving*, never counting a replica that is still loading."""

    have: int
    desired: int
    min_replicas: int
    priority: int
    serving: int | None = None  # None: as `have`

    @property
    def serves(self) -> int:
        return self.have if self.serving is None else self.serving


Place = Callable[[set[str]], Placement | None]  # blocked GPUs → a placement for the needing pool


def _spare(c: Candidate) -> bool:
    return c.role in ("warm", "starting")


def may_take(p: PoolShare, q: PoolShare, c: Candidate, taken_from_q: int, given_to_p: int) -> bool:
    """Whether the needing pool p may take candidate c of pool q (see the module docstring)."""
    below_min = p.have + given_to_p < p.min_replicas
    if _spare(c):
        return q.priority <= p.priority or below_min
    q_left = q.serves - taken_from_q
    if q_left - 1 < q.min_replicas:
        return False
    if q.priority < p.priority or below_min:
        return True
    if q.priority > p.priority:
        return False
    # equal priority: share by demand, p's share after the move no larger than q's
    return (p.have + given_to_p + 1) * max(q.desired, 1) <= (q_left - 1) * max(p.desired, 1)


def _order(c: Candidate, shares: Mapping[str, PoolShare]) -> tuple[int, int, float, float]:
    tier = 0 if (c.role == "warm" and c.sleeping) else 1 if c.role == "warm" else 2 if c.role == "starting" else 3
    return (tier, shares[c.pool].priority, c.load, -c.created_at)


def find_reclaim(
    need: str, shares: Mapping[str, PoolShare], candidates: Sequence[Candidate], blocked: set[str],
    place: Place, *, spare_only: bool, taken: Mapping[str, int], given: int,
) -> tuple[list[Candidate], Placement] | None:
    """The fewest allowed victims, cheapest first, whose GPUs together with the free ones place a
    replica of pool `need`; None if no allowed set does. taken: replicas already promised away per pool
    this tick; given: replicas already promised to `need`."""
    p = shares[need]
    freed: set[str] = set()
    picked: list[Candidate] = []
    took = dict(taken)
    for c in sorted(candidates, key=lambda c: _order(c, shares)):
        if c.pool == need or not c.gpus or (spare_only and not _spare(c)):
            continue
        if not may_take(p, shares[c.pool], c, took.get(c.pool, 0) if not _spare(c) else 0, given):
            continue
        picked.append(c)
        if not _spare(c):
            took[c.pool] = took.get(c.pool, 0) + 1
        freed.update(c.gpus)
        placed = place(blocked - freed)
        if placed is not None:
            # only the victims whose GPUs the placement uses: the others keep serving
            used = set(placed.gpus)
            return [v for v in picked if used & set(v.gpus)], placed
    return None


def find_move(
    need: str, shares: Mapping[str, PoolShare], candidates: Sequence[Candidate], blocked: set[str],
    place: Place, place_for: Callable[[str, set[str]], Placement | None], k: int,
) -> tuple[Candidate, Placement] | None:
    """A replica smaller than k GPUs whose GPUs, with free ones, would place `need`'s replica, and that
    can itself be placed elsewhere (outside that set): fragmentation undone without losing capacity.
    Cheapest first: lowest priority, least loaded."""
    for c in sorted(candidates, key=lambda c: (shares[c.pool].priority, c.load, -c.created_at)):
        if c.pool == need or not c.gpus or len(c.gpus) >= k or c.role == "starting":
            continue
        target = place(blocked - set(c.gpus))
        if target is None or not set(target.gpus) & set(c.gpus):
            continue
        if place_for(c.pool, blocked | set(target.gpus)) is None:
            continue
        return c, target
    return None

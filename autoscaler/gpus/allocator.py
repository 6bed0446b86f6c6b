"""Topology-aware GPU placement. Pure and deterministic.

A request asks for k whole GPUs (tensor parallel) or a memory share of one GPU,
optionally of a GPU model and with a minimum memory. Candidate sets are ranked,
best first, by:

1. the weakest link inside the set (NVLink ≫ one switch ≫ several switches ≫
   host bridge ≫ same NUMA node ≫ cross-socket) — tensor parallelism runs at
   the speed of its slowest link;
2. what stays free: the sizes of the NVLink islands left (largest first), then
   the best weakest link still achievable for each later request size — so a
   1-GPU replica does not break the NVLink pair a 2-GPU replica will need;
3. NUMA locality: fewer NUMA nodes spanned;
4. lowest GPU indices (determinism).

The search is exhaustive for up to EXACT_GPUS free GPUs (at most C(8,4) = 70
sets, each with its look-ahead: well under a millisecond). With more free GPUs
it grows one set greedily from every seed GPU (adding the GPU with the best
link to the set so far), for the choice and for the look-ahead alike: n sets
instead of C(n, k). That keeps rule 1 exact on all-to-all fabrics (NVSwitch)
and on hosts made of equal NVLink islands, and is a heuristic otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

from autoscaler.gpus.topology import Link, LinkKind, Topology

EXACT_GPUS = 8
FUTURE_SIZES = (2, 4, 8)


@dataclass(frozen=True)
class Request:
    k: int = 1  # whole GPUs; 0 with share_mb set = a memory share of one GPU
    model: str | None = None  # substring of the GPU name, case-insensitive
    min_memory_mb: int = 0
    share_mb: int = 0  # memory share of one GPU (k must be 0)
    min_link: LinkKind | None = None  # refuse sets whose weakest link is below this


@dataclass(frozen=True)
class Allocation:
    gpus: tuple[int, ...]  # indices into topology.gpus
    weakest: Link | None  # None for a single GPU
    numa_nodes: tuple[int, ...]
    share_mb: int = 0


def weakest_link(topo: Topology, s: Sequence[int]) -> Link | None:
    if len(s) < 2:
        return None
    return min((topo.link(i, j) for i, j in combinations(s, 2)), key=lambda link: link.score)


def _weak_score(topo: Topology, s: Sequence[int]) -> float:
    """The score of the set's weakest link; one GPU has no link to be weak (inf)."""
    w = weakest_link(topo, s)
    return w.score if w is not None else math.inf


def nvlink_islands(topo: Topology, free: Iterable[int]) -> list[int]:
    """Sizes of the connected NVLink components among `free`, largest first."""
    free_set = set(free)
    seen: set[int] = set()
    sizes = []
    for start in sorted(free_set):
        if start in seen:
            continue
        stack, size = [start], 0
        seen.add(start)
        while stack:
            i = stack.pop()
            size += 1
            for j in free_set:
                if j not in seen and topo.link(i, j).kind == LinkKind.NVLINK:
                    seen.add(j)
                    stack.append(j)
        sizes.append(size)
    return sorted(sizes, reverse=True)


def best_weakest(topo: Topology, free: Sequence[int], k: int) -> int:
    """The best weakest-link score any k-subset of `free` has (0 if none fits)."""
    if len(free) < k:
        return 0
    if k == 1:
        return 1
    # k >= 2: every set has a weakest link
    return max((w.score for s in _candidates(topo, free, k) if (w := weakest_link(topo, s)) is not None),
               default=0)


def _candidates(topo: Topology, free: Sequence[int], k: int) -> Iterable[tuple[int, ...]]:
    if len(free) <= EXACT_GPUS:
        return combinations(sorted(free), k)
    return _greedy_sets(topo, sorted(free), k)


def _greedy_sets(topo: Topology, free: list[int], k: int) -> list[tuple[int, ...]]:
    out = set()
    for seed in free:
        s = [seed]
        rest = [g for g in free if g != seed]
        while len(s) < k:
            nxt = max(rest, key=lambda g: (min(topo.link(g, x).score for x in s), -g))
            s.append(nxt)
            rest.remove(nxt)
        out.add(tuple(sorted(s)))
    return sorted(out)


def _numa(topo: Topology, s: Sequence[int]) -> tuple[int, ...]:
    nodes: set[int] = set()
    for i in s:
        nodes.update(topo.gpus[i].numa)
    return tuple(sorted(nodes))


def eligible(topo: Topology, req: Request, used: Iterable[int]) -> list[int]:
    taken = set(used) | set(topo.cordoned)
    out = []
    for g in topo.gpus:
        if g.index in taken:
            continue
        if req.model and req.model.lower() not in g.name.lower():
            continue
        if req.min_memory_mb and g.memory_mb and g.memory_mb < req.min_memory_mb:
            continue
        out.append(g.index)
    return out


def allocate(
    topo: Topology,
    req: Request,
    used: Iterable[int] = (),
    shared: dict[int, int] | None = None,
    future: Sequence[int] = FUTURE_SIZES,
) -> Allocation | None:
    """Choose GPUs for one replica, or None when no set satisfies the request.

    `used`: GPUs held whole; `shared`: GPU → MiB already handed out as shares; `future`: the replica
    sizes to keep placeable (rule 2), smallest first: every pool's, when the caller knows the fleet.
    """
    shared = shared or {}
    used = set(used)
    if req.k == 0:
        return _allocate_share(topo, req, used, shared)
    # A GPU that holds shares is not free for a whole-GPU replica.
    free = eligible(topo, req, used | set(shared))
    if len(free) < req.k:
        return None
    all_free = [g.index for g in topo.gpus if g.index not in used and g.index not in shared
                and g.index not in topo.cordoned]
    best_key = None
    best: tuple[int, ...] | None = None
    for s in _candidates(topo, free, req.k):
        weak = _weak_score(topo, s)
        if req.min_link is not None and req.k > 1 and weak < Link(req.min_link, 1).score:
            continue
        left = [g for g in all_free if g not in s]
        future_fit = tuple(best_weakest(topo, left, k) for k in future if k <= len(left))
        key = (weak, tuple(nvlink_islands(topo, left)), future_fit, -len(_numa(topo, s)),
               tuple(-i for i in s))
        if best_key is None or key > best_key:
            best_key, best = key, s
    if best is None:
        return None
    return Allocation(best, weakest_link(topo, best), _numa(topo, best))


def _allocate_share(topo: Topology, req: Request, used: set[int], shared: dict[int, int]) -> Allocation | None:
    if req.share_mb <= 0:
        raise ValueError("a request for k=0 GPUs needs share_mb > 0")
    fits = []
    for i in eligible(topo, req, used):
        g = topo.gpus[i]
        free_mb = g.memory_mb - shared.get(i, 0) if g.memory_mb else math.inf
        if free_mb >= req.share_mb:
            # Pack shares onto GPUs that already hold some; keep whole GPUs whole.
            fits.append((i not in shared, free_mb, i))
    if not fits:
        return None
    i = min(fits)[2]
    return Allocation((i,), None, _numa(topo, (i,)), share_mb=req.share_mb)


def first_fit(topo: Topology, req: Request, used: Iterable[int] = ()) -> Allocation | None:
    """The baseline: the lexicographically first free set that meets min_link."""
    free = eligible(topo, req, used)
    for s in combinations(free, req.k):
        w = weakest_link(topo, s)
        if req.min_link is not None and req.k > 1 and (w is None or w.score < Link(req.min_link, 1).score):
            continue
        return Allocation(s, w, _numa(topo, s))
    return None

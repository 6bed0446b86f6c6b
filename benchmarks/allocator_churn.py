"""Churn benchmark: topology-aware allocator vs first-fit on 8-GPU hosts.

A seeded random sequence of requests (k = 1, 2 or 4 GPUs) and releases is
replayed against each allocator. Multi-GPU requests need NVLink between every
pair (tensor parallel over PCIe is refused by policy). We count requests
refused while at least k GPUs were free — capacity lost to fragmentation.

"gpufleet + moves" is the live loop's answer to such a refusal (autoscaler.loop.arbiter.find_move,
the same function): re-place one smaller replica outside the set the request needs, when it
fits elsewhere. Each move is one replica restarted (started elsewhere first, then drained):
the churn it costs is counted.

    python -m benchmarks.allocator_churn [--seeds 20] [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

from autoscaler.gpus.allocator import Allocation, Request, allocate, first_fit
from autoscaler.gpus.placement import choose_gpus
from autoscaler.gpus.slots import Placement
from autoscaler.gpus.topology import Gpu, Link, LinkKind, Topology, load_topology_file
from autoscaler.loop.arbiter import Candidate, PoolShare, find_move

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "topology"


def islands_of_4() -> Topology:
    """Two Dell C4140 boards (4-GPU NV2 mesh each, from the shared dump) joined across sockets."""
    gpus = tuple(Gpu(i, f"GPU{i}", numa=(i // 4,)) for i in range(8))
    links = {(i, j): Link(LinkKind.NVLINK, 2) if i // 4 == j // 4 else Link(LinkKind.SYS)
             for i in range(8) for j in range(8) if i != j}
    return Topology(gpus, links, "2x C4140 NV2 mesh (synthetic from dell-c4140 dump)")


def bridged_pairs() -> Topology:
    """8 PCIe A100s in NVLink-bridged pairs, 2 sockets (the 4xA100 dump's pattern, doubled)."""
    gpus = tuple(Gpu(i, f"GPU{i}", numa=(i // 4,)) for i in range(8))

    def link(i: int, j: int) -> Link:
        if i // 2 == j // 2:
            return Link(LinkKind.NVLINK, 12)
        return Link(LinkKind.NODE) if i // 4 == j // 4 else Link(LinkKind.SYS)

    links = {(i, j): link(i, j) for i in range(8) for j in range(8) if i != j}
    return Topology(gpus, links, "4 NV12-bridged pairs (synthetic from 4xa100 dump)")


def events(seed: int, steps: int) -> list[tuple[str, int, int]]:
    """('req', k, id) or ('rel', 0, id-of-an-earlier-request).

    A release is likelier the more requests are live (p = L / (L + 3.5)), so the
    offered load hovers around 3.5 requests ≈ 6.6 of 8 GPUs: busy, not saturated.
    """
    rng = random.Random(seed)
    out: list[tuple[str, int, int]] = []
    live: list[int] = []
    for n in range(steps):
        if live and rng.random() < len(live) / (len(live) + 3.5):
            out.append(("rel", 0, live.pop(rng.randrange(len(live)))))
        else:
            k = rng.choices([1, 2, 4], weights=[0.5, 0.3, 0.2])[0]
            out.append(("req", k, n))
            live.append(n)
    return out


Alloc = Callable[[Topology, Request, set[int]], Allocation | None]


def _move(topo: Topology, held: dict[int, tuple[int, ...]], used: set[int], k: int) -> bool:
    """One fragmentation move for a k-GPU request, as reconcile makes it; True if one was made."""
    ids = {g.index: g.id for g in topo.gpus}
    index = {v: i for i, v in ids.items()}
    size = {rid: len(gs) for rid, gs in held.items()}

    def place(kk: int, blocked: set[str]) -> Placement | None:
        return choose_gpus(topo, blocked, kk, min_link=LinkKind.NVLINK if kk > 1 else None)

    cands = [Candidate(str(rid), f"k{len(gs)}", "active", tuple(ids[g] for g in gs), 0.0, float(rid))
             for rid, gs in held.items()]
    shares = {f"k{n}": PoolShare(1, 1, 0, 0) for n in (1, 2, 4, 8)} | {"need": PoolShare(0, 1, 0, 0)}
    blocked = {ids[g] for g in used}
    found = find_move("need", shares, cands, blocked, lambda b: place(k, b),
                      lambda pool, b: place(int(pool[1:]), b), k)
    if found is None:
        return False
    victim, target = found
    rid = int(victim.id)
    new = place(size[rid], blocked | set(target.gpus))
    assert new is not None  # find_move checked it
    used.difference_update(held[rid])
    held[rid] = tuple(index[g] for g in new.gpus)
    used.update(held[rid])
    return True


def replay(topo: Topology, alloc: Alloc, evs: list[tuple[str, int, int]], moves: bool = False) -> dict[str, float]:
    held: dict[int, tuple[int, ...]] = {}
    used: set[int] = set()
    asked = refused = refused_with_room = moved = granted = 0
    # a request no set of this host can ever satisfy is not fragmentation
    feasible = {k: alloc(topo, Request(k=k, min_link=LinkKind.NVLINK if k > 1 else None), set()) is not None
                for k in (1, 2, 4)}
    for kind, k, rid in evs:
        if kind == "rel":
            for g in held.pop(rid, ()):
                used.discard(g)
            continue
        asked += 1
        req = Request(k=k, min_link=LinkKind.NVLINK if k > 1 else None)
        a = alloc(topo, req, used)
        # moves: one at a time, while a fit exists and each move brings one nearer (bounded by the host)
        while a is None and moves and k > 1 and topo.n - len(used) >= k and moved < 10**6:
            if not _move(topo, held, used, k):
                break
            moved += 1
            a = alloc(topo, req, used)
        if a is None:
            refused += 1
            if feasible[k] and topo.n - len(used) >= k:
                refused_with_room += 1
            continue
        held[rid] = a.gpus
        used.update(a.gpus)
        granted += k
    return {"requests": asked, "refused": refused, "refused_with_room": refused_with_room, "moves": moved,
            "gpus_granted": granted}



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    topos = {
        "islands-of-4": islands_of_4(),
        "bridged-pairs": bridged_pairs(),
        "hgx-8xa100-nvswitch": load_topology_file(FIX / "hgx-8xa100-sxm4-nv12-aws-p4d.txt"),
    }
    algos: dict[str, tuple[Alloc, bool]] = {
        "gpufleet": (lambda t, r, u: allocate(t, r, u), False),
        "gpufleet + moves": (lambda t, r, u: allocate(t, r, u), True),
        "first-fit": (lambda t, r, u: first_fit(t, r, u), False),
    }
    results = {}
    print(f"{args.seeds} seeds x {args.steps} events; k in {{1,2,4}} (weights .5/.3/.2), k>1 needs NVLink\n")
    print("| topology | allocator | requests | refused | refused while >= k GPUs free (and a fit exists) "
          "| GPUs granted | moves (replica restarts) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for tname, topo in topos.items():
        for aname, (fn, moves) in algos.items():
            tot = {"requests": 0, "refused": 0, "refused_with_room": 0, "moves": 0, "gpus_granted": 0}
            for seed in range(args.seeds):
                r = replay(topo, fn, events(seed, args.steps), moves=moves)
                for key in tot:
                    tot[key] += int(r[key])
            results[f"{tname}/{aname}"] = tot
            pct = 100 * tot["refused_with_room"] / tot["requests"]
            print(f"| {tname} | {aname} | {tot['requests']} | {tot['refused']} | "
                  f"{tot['refused_with_room']} ({pct:.1f} %) | {tot['gpus_granted']} | {tot['moves']} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""The allocator: optimal weakest link (checked by brute force), anti-fragmentation, NUMA, constraints."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.gpus.allocator import Request, allocate, first_fit, weakest_link
from autoscaler.gpus.topology import Gpu, Link, LinkKind, Topology, load_topology_file

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "topology"
TOPOS = {p.name: load_topology_file(p) for p in sorted(FIX.glob("*.txt"))}


def brute_best_weakest(t: Topology, free: list[int], k: int) -> int | None:
    scores = [min((t.link(i, j).score for i, j in combinations(s, 2)), default=10**9)
              for s in combinations(free, k)]
    return max(scores) if scores else None


@pytest.mark.parametrize("name", sorted(TOPOS))
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_weakest_link_is_best_achievable_on_empty_host(name, k):
    t = TOPOS[name]
    a = allocate(t, Request(k=k))
    if k > t.n:
        assert a is None
        return
    assert a is not None and len(a.gpus) == k == len(set(a.gpus))
    best = brute_best_weakest(t, list(range(t.n)), k)
    got = weakest_link(t, a.gpus)
    assert (got.score if got else 10**9) == best


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(TOPOS)), st.sampled_from([1, 2, 4, 8]), st.data())
def test_weakest_link_is_best_achievable_for_any_used_state(name, k, data):
    t = TOPOS[name]
    used = data.draw(st.sets(st.integers(0, t.n - 1)))
    free = [i for i in range(t.n) if i not in used]
    a = allocate(t, Request(k=k), used)
    if len(free) < k:
        assert a is None
        return
    assert a is not None and not set(a.gpus) & used
    got = weakest_link(t, a.gpus)
    assert (got.score if got else 10**9) == brute_best_weakest(t, free, k)
    assert allocate(t, Request(k=k), used) == a, "deterministic"


def test_single_gpu_request_keeps_the_nvlink_pair_free():
    t = TOPOS["4xa100-pcie-nv12-bridge-pair-2socket-mlx.txt"]
    one = allocate(t, Request(k=1))
    assert one.gpus[0] in (2, 3)
    pair = allocate(t, Request(k=2), used=one.gpus)
    assert pair.gpus == (0, 1) and pair.weakest == Link(LinkKind.NVLINK, 12)
    assert first_fit(t, Request(k=1)).gpus == (0,), "first-fit breaks the pair"


def test_numa_locality_when_links_are_equal():
    t = TOPOS["8xrtx4090-pcie-all-sys-2socket-nics.txt"]  # all SYS: only NUMA tells sockets apart
    a = allocate(t, Request(k=4), used={0})
    assert a.numa_nodes == (1,) and set(a.gpus) == {4, 5, 6, 7}
    b = allocate(t, Request(k=2), used={0, 4})
    assert len(b.numa_nodes) == 1


def test_nvswitch_box_prefers_one_numa_node():
    t = TOPOS["hgx-8xh100-sxm-nv18-aws-p5.txt"]
    a = allocate(t, Request(k=4), used={1})
    assert a.gpus == (4, 5, 6, 7) and a.numa_nodes == (1,)


def test_min_link_refuses_pcie_sets():
    t = TOPOS["4xa100-pcie-nv12-bridge-pair-2socket-mlx.txt"]
    assert allocate(t, Request(k=2, min_link=LinkKind.NVLINK), used={0}) is None
    assert allocate(t, Request(k=2, min_link=LinkKind.NODE), used={0}).gpus == (2, 3)


def _mixed() -> Topology:
    gpus = tuple(Gpu(i, f"GPU{i}", name="NVIDIA A100-SXM4-80GB" if i < 2 else "NVIDIA L4",
                     memory_mb=81920 if i < 2 else 23034, numa=(0,)) for i in range(4))
    links = {(i, j): Link(LinkKind.PHB) for i in range(4) for j in range(4) if i != j}
    return Topology(gpus, links, "mixed", cordoned=frozenset({1}))


def test_model_memory_and_cordon_constraints():
    t = _mixed()
    assert allocate(t, Request(k=1, model="a100")).gpus == (0,)
    assert allocate(t, Request(k=2, model="a100")) is None, "GPU1 is cordoned"
    assert allocate(t, Request(k=1, min_memory_mb=40000)).gpus == (0,)
    assert allocate(t, Request(k=2, model="L4")).gpus == (2, 3)


def test_memory_shares_pack_onto_shared_gpus_first():
    t = _mixed()
    a = allocate(t, Request(k=0, share_mb=10000, model="L4"))
    assert a.gpus == (2,) and a.share_mb == 10000
    b = allocate(t, Request(k=0, share_mb=10000, model="L4"), shared={2: 10000})
    assert b.gpus == (2,), "pack onto the GPU that already holds a share"
    c = allocate(t, Request(k=0, share_mb=10000, model="L4"), shared={2: 20000})
    assert c.gpus == (3,)
    whole = allocate(t, Request(k=2, model="L4"), shared={2: 10000})
    assert whole is None, "a shared GPU is not free for whole-GPU replicas"


def test_beyond_eight_gpus_uses_greedy_and_still_finds_islands():
    # 16 GPUs: four NVLink islands of 4, PHB between islands
    n = 16
    gpus = tuple(Gpu(i, f"GPU{i}", numa=(i // 8,)) for i in range(n))
    links = {(i, j): Link(LinkKind.NVLINK, 4) if i // 4 == j // 4 else Link(LinkKind.PHB)
             for i in range(n) for j in range(n) if i != j}
    t = Topology(gpus, links, "16")
    a = allocate(t, Request(k=4), used={0})
    assert a.weakest == Link(LinkKind.NVLINK, 4) and len({g // 4 for g in a.gpus}) == 1

"""Every shared `nvidia-smi topo -m` dump parses into the right matrix; NVML reads the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler.gpus.nvml import read_topology
from autoscaler.gpus.topology import (
    Link,
    LinkKind,
    TopologyParseError,
    load_topology_file,
    parse_topo_matrix,
    render_matrix,
)
from tests.fake_nvml import FakeNvml

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "topology"
ALL = sorted(FIX.glob("*.txt"))

NV = lambda n: Link(LinkKind.NVLINK, n)  # noqa: E731
K = {k.name: Link(k) for k in LinkKind}

# file → (gpu count, {(i, j): link}, {gpu: (first cpus, numa)})
EXPECT = {
    "2xrtx5090-pcie-phb-threadripper.txt": (2, {(0, 1): K["PHB"]}, {1: ((0, 1), (0,))}),
    "4xa100-pcie-nv12-bridge-pair-2socket-mlx.txt": (
        4, {(0, 1): NV(12), (0, 2): K["SYS"], (1, 3): K["SYS"], (2, 3): K["NODE"]},
        {0: ((0, 1), (0,)), 2: ((28, 29), (1,))}),
    "4xl40s-pcie-node-sys-2socket-nics.txt": (
        4, {(0, 1): K["NODE"], (1, 2): K["SYS"], (2, 3): K["NODE"]}, {3: ((96, 97), (1,))}),
    "8xa10g-pcie-all-phb-aws-g5-48xlarge.txt": (
        8, {(0, 7): K["PHB"], (3, 4): K["PHB"]}, {5: ((0, 1), (0, 1))}),
    "8xrtx4090-pcie-all-sys-2socket-nics.txt": (
        8, {(0, 1): K["SYS"], (6, 7): K["SYS"], (3, 4): K["SYS"]}, {0: ((0, 1), (0,)), 4: ((56, 57), (1,))}),
    "dell-c4140-4xv100-sxm2-nv2-mesh.txt": (
        4, {(0, 1): NV(2), (1, 3): NV(2), (2, 3): NV(2)}, {3: ((0, 2), (0,))}),
    "hgx-8xa100-sxm4-nv12-aws-p4d.txt": (
        8, {(0, 7): NV(12), (3, 4): NV(12)}, {0: ((0, 1), (0,)), 7: ((24, 25), (1,))}),
    "hgx-8xh100-sxm-nv18-aws-p5.txt": (
        8, {(0, 1): NV(18), (2, 6): NV(18)}, {4: ((48, 49), (1,))}),
}


def test_every_shared_file_is_covered():
    assert {p.name for p in ALL} == set(EXPECT)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_matrix_cells_and_affinity(path):
    n, cells, aff = EXPECT[path.name]
    t = load_topology_file(path)
    assert t.n == n and [g.id for g in t.gpus] == [f"GPU{i}" for i in range(n)]
    for (i, j), link in cells.items():
        assert t.link(i, j) == link and t.link(j, i) == link, (i, j)
    for g, (cpus, numa) in aff.items():
        assert t.gpus[g].cpus[:2] == cpus and t.gpus[g].numa == numa
    assert len(t.links) == n * (n - 1), "every ordered pair has a link"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_nvml_path_reads_the_same_links(path):
    t = load_topology_file(path)
    r = read_topology(FakeNvml(t))
    assert {k: str(v) for k, v in r.links.items()} == {k: str(v) for k, v in t.links.items()}
    assert r.gpus[0].id.startswith("GPU-") and r.gpus[0].memory_mb == 81559
    for a, b in zip(r.gpus, t.gpus, strict=True):
        assert a.cpus == b.cpus
        assert a.numa == (b.numa if len(b.numa) == 1 else ())


def test_nvml_lost_gpu_is_cordoned_not_fatal():
    t = load_topology_file(FIX / "hgx-8xh100-sxm-nv18-aws-p5.txt")
    r = read_topology(FakeNvml(t, lost=(3,)))
    assert r.cordoned == {3} and "NVML" in r.cordon_reasons[3]
    assert r.link(0, 1) == NV(18)


def test_parse_errors_name_line_and_reason():
    with pytest.raises(TopologyParseError, match=r"x:2: unknown link 'NVX'"):
        parse_topo_matrix("\tGPU0\tGPU1\nGPU0\t X \tNVX\nGPU1\tNV1\t X \n", "x")
    with pytest.raises(TopologyParseError, match="no header"):
        parse_topo_matrix("hello\n", "x")
    with pytest.raises(TopologyParseError, match=r"x:3: .*GPU1/GPU0 is PIX but GPU0/GPU1 is PHB|x:2: "):
        parse_topo_matrix("\tGPU0\tGPU1\nGPU0\t X \tPHB\nGPU1\tPIX\t X \n", "x")
    with pytest.raises(TopologyParseError, match="diagonal"):
        parse_topo_matrix("\tGPU0\tGPU1\nGPU0\tPHB\tPHB\nGPU1\tPHB\t X \n", "x")


def test_old_legend_soc_means_sys_and_blank_affinity():
    t = parse_topo_matrix("\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tSOC\t\nGPU1\tSOC\t X \t\n")
    assert t.link(0, 1) == K["SYS"] and t.gpus[0].cpus == ()


def test_render_matrix_shows_links_affinity_and_holders():
    t = load_topology_file(FIX / "4xa100-pcie-nv12-bridge-pair-2socket-mlx.txt")
    out = render_matrix(t, {"GPU1": "r-chat-1"})
    lines = out.splitlines()
    assert lines[1].split()[:5] == ["GPU0", "X", "NV12", "SYS", "SYS"]
    assert "0-27,56-83" in lines[1] and "r-chat-1" in lines[2]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
@pytest.mark.parametrize("style", ["single-space", "terminal", "spaces"])
def test_header_separated_unlike_the_rows_still_parses(path, style):
    """Older drivers print the header with single spaces (and underlined on a terminal) while the rows
    stay tab-separated; the same matrix must come out."""
    text = path.read_text()
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if "GPU0" in ln and " X " not in ln)
    cols = [c for c in lines[i].split("\t") if c]
    if style == "single-space":
        lines[i] = " " * 8 + " ".join(cols)
    elif style == "terminal":
        lines[i] = "\x1b[4m\t" + "\t".join(cols) + "\x1b[0m"
    else:
        lines[i] = " " * 8 + "".join(c.ljust(len(c) + 3) for c in cols)
    old, new = load_topology_file(path), parse_topo_matrix("\n".join(lines), path.name)
    assert new.n == old.n and new.links == old.links
    assert [(g.cpus, g.numa) for g in new.gpus] == [(g.cpus, g.numa) for g in old.gpus]

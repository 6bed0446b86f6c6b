from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from autoscaler.gpus.nvml import read_topology
from autoscaler.gpus.placement import TopologyPlacer, make_placer
from autoscaler.gpus.settings import GpuConfig
from autoscaler.gpus.topology import LinkKind, load_topology_file, topology_from_json, topology_to_json
from autoscaler.runtime.local import cuda_visible_devices
from tests.fake_nvml import FakeNvml

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "topology"


def test_placer_uses_ids_numa_local_cores_and_skips_used_and_cordoned():
    t = read_topology(FakeNvml(load_topology_file(FIX / "hgx-8xa100-sxm4-nv12-aws-p4d.txt")))
    p = TopologyPlacer(t, host_cpus=set(range(96)))
    a = p.place(4, set())
    assert all(g.startswith("GPU-") for g in a.gpus) and "NV12" in a.note
    numa0 = set(range(0, 24)) | set(range(48, 72))
    numa1 = set(range(24, 48)) | set(range(72, 96))
    assert set(a.cpus) in (numa0, numa1), "cores of the GPUs' NUMA node"
    b = p.place(4, set(a.gpus))
    assert not set(a.gpus) & set(b.gpus)
    assert p.place(1, set(a.gpus) | set(b.gpus)) is None
    p.cordon(t.gpus[0].id, "XID 79")
    assert t.gpus[0].id not in p.place(8 - 1, set()).gpus
    assert p.place(8, set()) is None


def test_nvml_health_check_cordons_a_lost_gpu():
    t = load_topology_file(FIX / "hgx-8xh100-sxm-nv18-aws-p5.txt")
    fake = FakeNvml(t)
    p = TopologyPlacer(read_topology(fake), fake)
    assert p.health_check() == {}
    fake.lost.add(5)
    new = p.health_check()
    assert list(new) == [p.topo.gpus[5].id] and p.topo.gpus[5].id in p.cordoned
    assert p.topo.gpus[5].id not in p.place(7, set()).gpus


def test_make_placer_sources(tmp_path):
    none = make_placer(GpuConfig(source="none", virtual_slots=3))
    assert [g.id for g in none.topo.gpus] == ["vslot0", "vslot1", "vslot2"] and none.place(2, set()).cpus == ()
    f = make_placer(GpuConfig(source="topology", topology_file=FIX / "dell-c4140-4xv100-sxm2-nv2-mesh.txt"))
    assert f.topo.n == 4
    auto = make_placer(GpuConfig(source="auto", virtual_slots=2))  # no GPU on this host: virtual slots
    assert auto.topo.n >= 1


def test_cuda_visible_devices():
    assert cuda_visible_devices(("GPU2", "GPU3")) == "2,3"
    assert cuda_visible_devices(("GPU-abc",)) == "GPU-abc"
    assert cuda_visible_devices(("vslot0",)) is None and cuda_visible_devices(()) is None


def test_topology_json_round_trip():
    t = read_topology(FakeNvml(load_topology_file(FIX / "4xa100-pcie-nv12-bridge-pair-2socket-mlx.txt"), lost=(3,)))
    back = topology_from_json(topology_to_json(t))
    assert back.links == t.links and back.gpus == t.gpus and back.cordoned == {3}
    assert back.link(0, 1).kind == LinkKind.NVLINK


def test_cli_gpus_place_what_if():
    topo = FIX / "4xl40s-pcie-node-sys-2socket-nics.txt"
    run = [sys.executable, "-m", "autoscaler.cli", "gpus", "--topology", str(topo)]
    r = subprocess.run([*run, "--place", "2", "--used", "GPU0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "would get: GPU2, GPU3" in r.stdout and "weakest link: NODE" in r.stdout
    assert "96-191,288-383" in r.stdout
    r = subprocess.run([*run, "--place", "2", "--min-link", "NVLINK"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "does not fit" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "autoscaler.cli", "gpus", "--topology", "/nonexistent"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cannot read" in bad.stderr


def test_gpu_check_on_a_real_topology_through_nvmls_own_shapes_and_without_a_gpu():
    from autoscaler.gpucheck import check

    fake = FakeNvml(load_topology_file(FIX / "hgx-8xh100-sxm-nv18-aws-p5.txt"))
    lines: list[str] = []
    assert check(nvml=fake, out=lines.append, engine="none") == 0
    text = "\n".join(lines)
    assert "NVML sees 8 GPU(s)" in text and "a 8-GPU replica would get" in text
    assert "weakest link NV" in next(x for x in lines if x.startswith("a 2-GPU replica"))
    assert sum(1 for x in lines if x.startswith("GPU ")) == 8 and "health: every GPU answers NVML" in text
    fake.lost.add(2)
    assert check(nvml=fake, out=lines.append, engine="none") == 1

    class NoNvml:
        class NVMLError(Exception):
            pass

        def nvmlInit(self) -> None:
            raise self.NVMLError("NVML Shared Library Not Found")

    out: list[str] = []
    assert check(nvml=NoNvml(), out=out.append) == 3 and "NVML Shared Library Not Found" in out[0]

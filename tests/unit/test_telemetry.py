"""GPU telemetry under DCGM exporter's names, read through NVML's API from fakes built on the real topology dumps."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from autoscaler.gpus.nvml import read_topology
from autoscaler.gpus.telemetry import SIMULATED_MODEL, SlotLoad, dcgm_metrics, read_nvml, simulated_readings
from autoscaler.gpus.topology import Link, LinkKind, load_topology_file, uniform_topology
from tests.fake_nvml import FakeNvml

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "topology"


def exposition(readings) -> dict[str, dict[tuple, float]]:
    """What Prometheus would scrape: family name → {sorted labels: value}."""
    class C(Collector):
        def collect(self):
            return dcgm_metrics(readings, hostname="box")

    reg = CollectorRegistry()
    reg.register(C())
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.mark.parametrize("dump", sorted(FIX.glob("*.txt")), ids=lambda p: p.stem)
def test_every_gpu_of_every_dump_reports_under_dcgm_names(dump: Path):
    topo = load_topology_file(dump)
    load = {i: {"util": 10 * i % 100, "mem_util": 5, "used_mb": 1000 * (i + 1), "temp": 40 + i, "power_mw": 250_500,
                "energy_mj": 1_000_000 + i, "sm_mhz": 1980} for i in range(topo.n)}
    fake = FakeNvml(topo, load=load)
    live = read_topology(fake)
    got = exposition(read_nvml(fake, live))
    util = got["DCGM_FI_DEV_GPU_UTIL"]
    assert len(util) == topo.n
    for i in range(topo.n):
        labels = (("Hostname", "box"), ("UUID", live.gpus[i].id), ("device", f"nvidia{i}"),
                  ("gpu", str(i)), ("modelName", "NVIDIA H100 80GB HBM3"), ("pci_bus_id", fake.bus[i]))
        assert util[labels] == 10 * i % 100
        assert got["DCGM_FI_DEV_FB_USED"][labels] == 1000 * (i + 1)  # MiB, as DCGM
        assert got["DCGM_FI_DEV_FB_FREE"][labels] == 81559 - 1000 * (i + 1)
        assert got["DCGM_FI_DEV_GPU_TEMP"][labels] == 40 + i
        assert got["DCGM_FI_DEV_POWER_USAGE"][labels] == 250.5  # W from NVML's mW
        assert got["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"][labels] == 1_000_000 + i
        assert got["DCGM_FI_DEV_SM_CLOCK"][labels] == 1980
        assert got["DCGM_FI_DEV_MEM_COPY_UTIL"][labels] == 5


def test_a_field_a_gpu_cannot_report_is_left_out_for_that_gpu_only():
    topo = load_topology_file(FIX / "4xa100-pcie-nv12-bridge-pair-2socket-mlx.txt")
    fake = FakeNvml(topo, load={i: {"power_mw": 100_000, "temp": 50} for i in range(4)},
                    unsupported={1: {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetTotalEnergyConsumption"}})
    live = read_topology(fake)
    got = exposition(read_nvml(fake, live))
    power_gpus = {dict(k)["gpu"] for k in got["DCGM_FI_DEV_POWER_USAGE"]}
    assert power_gpus == {"0", "2", "3"}
    assert {dict(k)["gpu"] for k in got["DCGM_FI_DEV_GPU_TEMP"]} == {"0", "1", "2", "3"}


def test_a_lost_gpu_is_skipped_and_the_others_still_report():
    topo = load_topology_file(FIX / "hgx-8xh100-sxm-nv18-aws-p5.txt")
    fake = FakeNvml(topo, load={i: {"util": 50} for i in range(8)})
    live = read_topology(fake)
    fake.lost = {3}  # falls off the bus after start
    readings = read_nvml(fake, live)
    assert [r.index for r in readings] == [0, 1, 2, 4, 5, 6, 7]
    assert all(r.util_pct == 50 for r in readings)


def test_virtual_slots_report_their_holders_load_and_say_they_are_simulated():
    topo = uniform_topology(3, Link(LinkKind.PHB))
    busy, idle = topo.gpus[0].id, topo.gpus[2].id
    readings = {r.uuid: r for r in simulated_readings(topo, {busy: SlotLoad(40 * 1024**3, 3, 0.5),
                                                             topo.gpus[1].id: SlotLoad(40 * 1024**3, 0, 0.0)})}
    assert all(r.model == SIMULATED_MODEL for r in readings.values())
    assert readings[busy].util_pct == 100 and readings[topo.gpus[1].id].util_pct == 0  # loaded but no batch
    assert readings[busy].fb_used_mib == 40 * 1024
    assert readings[busy].temp_c > readings[idle].temp_c and readings[busy].power_w > readings[idle].power_w
    assert readings[idle].util_pct == 0 and readings[idle].fb_used_mib == 0

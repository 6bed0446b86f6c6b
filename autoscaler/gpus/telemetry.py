"""What each GPU is doing now, for Prometheus under DCGM exporter's metric names and labels.

DCGM's names (`DCGM_FI_DEV_GPU_UTIL`, `DCGM_FI_DEV_FB_USED`, ...) and labels (`gpu`, `UUID`, `device`,
`modelName`, `Hostname`, `pci_bus_id`) let community DCGM dashboards and alerts work unchanged; the
readings come from NVML, which is what DCGM itself reads for these fields. Each NVML call that fails
leaves that one field out for that one GPU: a GPU that cannot report its power still reports its memory.

Without NVML (a CPU-only host's virtual slots, or GPUs from a topology file) `simulated_readings` gives
each GPU readings derived from what the sim replica holding it reports (its GPU memory, its batch), under
`modelName="gpufleet virtual slot (simulated)"`, so the GPU dashboard and alerts can be tried end to end
without a GPU and nobody mistakes the figures for hardware.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from autoscaler.gpus.nvml import handle
from autoscaler.gpus.topology import Topology

SIMULATED_MODEL = "gpufleet virtual slot (simulated)"  # also for a topology file's GPUs: none of it is read
MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str
    model: str
    pci_bus_id: str = ""
    util_pct: float | None = None
    mem_copy_util_pct: float | None = None
    fb_used_mib: float | None = None
    fb_free_mib: float | None = None
    temp_c: float | None = None
    power_w: float | None = None
    energy_mj: float | None = None  # since the driver loaded: a counter
    sm_clock_mhz: float | None = None


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def read_nvml(nvml: Any, topo: Topology) -> list[GpuReading]:
    """One reading per GPU of `topo` (NVML handles by UUID, so the indexes cannot drift)."""
    out: list[GpuReading] = []
    nvml.nvmlInit()
    try:
        for g in topo.gpus:
            try:
                h = handle(nvml, g)
            except nvml.NVMLError:
                continue  # lost: the placer cordons it; nothing to report

            def field(call: str, *args: Any, h: Any = h) -> Any:
                try:
                    return getattr(nvml, call)(h, *args)
                except (nvml.NVMLError, AttributeError):
                    return None

            util = field("nvmlDeviceGetUtilizationRates")
            mem = field("nvmlDeviceGetMemoryInfo")
            temp = field("nvmlDeviceGetTemperature", getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
            power = field("nvmlDeviceGetPowerUsage")  # mW
            energy = field("nvmlDeviceGetTotalEnergyConsumption")  # mJ
            clock = field("nvmlDeviceGetClockInfo", getattr(nvml, "NVML_CLOCK_SM", 1))
            pci = field("nvmlDeviceGetPciInfo")
            out.append(GpuReading(
                index=g.index, uuid=g.id, model=g.name or _s(field("nvmlDeviceGetName") or ""),
                pci_bus_id=_s(pci.busId) if pci is not None else g.pci_bus_id,
                util_pct=float(util.gpu) if util is not None else None,
                mem_copy_util_pct=float(util.memory) if util is not None else None,
                fb_used_mib=int(mem.used) / MIB if mem is not None else None,
                fb_free_mib=int(mem.free) / MIB if mem is not None else None,
                temp_c=float(temp) if temp is not None else None,
                power_w=int(power) / 1000 if power is not None else None,
                energy_mj=float(energy) if energy is not None else None,
                sm_clock_mhz=float(clock) if clock is not None else None,
            ))
    finally:
        nvml.nvmlShutdown()
    return out


@dataclass(frozen=True)
class SlotLoad:
    """What the sim replica on a virtual slot reports: its GPU memory, its batch, how full its KV pool is (0..1)."""

    memory_bytes: float
    running: float
    kv_usage: float


def simulated_readings(topo: Topology, load: Mapping[str, SlotLoad], memory_mib: float = 81559) -> list[GpuReading]:
    """Readings for virtual slots from their holders' load (a slot with no holder idles). Pure."""
    out = []
    for g in topo.gpus:
        sl = load.get(g.id)
        # as DCGM's GPU_UTIL: the share of time a kernel ran, which is all of it while a batch decodes
        util = 1.0 if sl and sl.running > 0 else 0.0
        heat = util * (0.6 + 0.4 * min(max(sl.kv_usage, 0.0), 1.0)) if sl else 0.0  # a fuller batch draws more
        used = min(sl.memory_bytes / MIB, memory_mib) if sl else 0.0
        out.append(GpuReading(
            index=g.index, uuid=g.id, model=SIMULATED_MODEL, util_pct=100 * util,
            mem_copy_util_pct=round(60 * heat, 1), fb_used_mib=round(used, 1), fb_free_mib=round(memory_mib - used, 1),
            # an idle H100 sits near 30 °C and 70 W; flat out near 65 °C and 700 W
            temp_c=round(30 + 35 * heat, 1), power_w=round(70 + 630 * heat, 1), sm_clock_mhz=1980.0 if sl else 345.0,
        ))
    return out


_GAUGES = (
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "util_pct"),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", "mem_copy_util_pct"),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", "fb_used_mib"),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", "fb_free_mib"),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", "temp_c"),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", "power_w"),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", "sm_clock_mhz"),
)
DCGM_LABELS = ["gpu", "UUID", "device", "modelName", "Hostname", "pci_bus_id"]


def dcgm_metrics(readings: list[GpuReading], hostname: str | None = None) -> Iterator[Metric]:
    """DCGM exporter's families for these readings; a field no GPU reported is left out."""
    host = hostname or socket.gethostname()

    def labels(r: GpuReading) -> list[str]:
        return [str(r.index), r.uuid, f"nvidia{r.index}", r.model, host, r.pci_bus_id]

    for name, doc, attr in _GAUGES:
        fam = GaugeMetricFamily(name, doc, labels=DCGM_LABELS)
        for r in readings:
            if (v := getattr(r, attr)) is not None:
                fam.add_metric(labels(r), v)
        if fam.samples:
            yield fam
    # a counter in DCGM; typed gauge here because prometheus_client would add `_total` to a counter's name
    energy = GaugeMetricFamily("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
                               "Total energy consumption since boot (in mJ).", labels=DCGM_LABELS)
    for r in readings:
        if r.energy_mj is not None:
            energy.add_metric(labels(r), r.energy_mj)
    if energy.samples:
        yield energy

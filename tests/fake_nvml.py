"""A stand-in for the `pynvml` module on a host without GPUs.

Built from a real `nvidia-smi topo -m` dump, it answers NVML's calls with
NVML's own data structures (pynvml's ctypes structs, constants and error class)
so the code under test runs exactly as it would against the real library. Only
what a multi-GPU host would report is invented: UUIDs, bus ids, memory, and
which NVLinks end on an NVSwitch (the all-NV# fixtures are HGX boards).
"""

from __future__ import annotations

import ctypes
from typing import Any

import pynvml

from autoscaler.gpus.topology import LinkKind, Topology

_LEVEL = {LinkKind.BOARD: pynvml.NVML_TOPOLOGY_INTERNAL, LinkKind.PIX: pynvml.NVML_TOPOLOGY_SINGLE,
          LinkKind.PXB: pynvml.NVML_TOPOLOGY_MULTIPLE, LinkKind.PHB: pynvml.NVML_TOPOLOGY_HOSTBRIDGE,
          LinkKind.NODE: pynvml.NVML_TOPOLOGY_NODE, LinkKind.SYS: pynvml.NVML_TOPOLOGY_SYSTEM}


class FakeNvml:
    NVMLError = pynvml.NVMLError
    NVML_FEATURE_ENABLED = pynvml.NVML_FEATURE_ENABLED
    NVML_FEATURE_DISABLED = pynvml.NVML_FEATURE_DISABLED
    NVML_NVLINK_MAX_LINKS = pynvml.NVML_NVLINK_MAX_LINKS
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM

    def __init__(self, topo: Topology, name: str = "NVIDIA H100 80GB HBM3", memory_mb: int = 81559,
                 lost: tuple[int, ...] = (), load: dict[int, dict[str, int]] | None = None,
                 unsupported: dict[int, set[str]] | None = None) -> None:
        self.topo = topo
        self.name = name
        self.memory_mb = memory_mb
        self.lost = set(lost)
        # per GPU, what its telemetry calls answer: util, mem_util (%), used_mb, temp (C), power_mw, energy_mj,
        # sm_mhz; unsupported: the calls that raise NVML_ERROR_NOT_SUPPORTED on that GPU (as on some boards)
        self.load = load or {}
        self.unsupported = unsupported or {}
        self.inits = 0
        n = topo.n
        self.bus = [f"00000000:{0x10 + 0x10 * i:02X}:00.0" for i in range(n)]
        # 8 GPUs all NV#: an HGX board on NVSwitch; smaller all-NV# boxes (C4140) are direct meshes
        self.all_nv = n >= 8 and all(link.kind == LinkKind.NVLINK for link in topo.links.values())
        # per GPU: list of remote bus ids, one per active NVLink
        self.nvlinks: list[list[str]] = [[] for _ in range(n)]
        for i in range(n):
            if self.all_nv:
                count = max(topo.link(i, j).nvlinks for j in range(n) if j != i)
                self.nvlinks[i] = ["00000000:F0:00.0"] * count  # an NVSwitch, not a GPU
            else:
                for j in range(n):
                    if j != i and topo.link(i, j).kind == LinkKind.NVLINK:
                        self.nvlinks[i] += [self.bus[j]] * topo.link(i, j).nvlinks

    def _err(self, code: int) -> pynvml.NVMLError:
        return pynvml.NVMLError(code)

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return self.topo.n

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if i in self.lost:
            raise self._err(pynvml.NVML_ERROR_GPU_IS_LOST)
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        i = int(uuid.rsplit("-", 1)[1])
        return self.nvmlDeviceGetHandleByIndex(i)

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-00000000-0000-0000-0000-{h:012d}"

    def nvmlDeviceGetName(self, h: int) -> str:
        return self.name

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        if h in self.lost:
            raise self._err(pynvml.NVML_ERROR_GPU_IS_LOST)
        m = pynvml.c_nvmlMemory_t()
        m.total = self.memory_mb * 1024 * 1024
        m.used = self._load(h, "used_mb") * 1024 * 1024
        m.free = m.total - m.used
        return m

    def _load(self, h: int, what: str, call: str | None = None) -> int:
        if h in self.lost:
            raise self._err(pynvml.NVML_ERROR_GPU_IS_LOST)
        if call in self.unsupported.get(h, set()):
            raise self._err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.load.get(h, {}).get(what, 0)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        u = pynvml.c_nvmlUtilization_t()
        u.gpu = self._load(h, "util", "nvmlDeviceGetUtilizationRates")
        u.memory = self._load(h, "mem_util")
        return u

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._load(h, "temp", "nvmlDeviceGetTemperature")

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return self._load(h, "power_mw", "nvmlDeviceGetPowerUsage")

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        return self._load(h, "energy_mj", "nvmlDeviceGetTotalEnergyConsumption")

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> int:
        assert clock == pynvml.NVML_CLOCK_SM
        return self._load(h, "sm_mhz", "nvmlDeviceGetClockInfo")

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        p = pynvml.nvmlPciInfo_t()
        p.busId = self.bus[h].encode()
        return p

    def nvmlDeviceGetCpuAffinity(self, h: int, words: int) -> Any:
        arr = (ctypes.c_ulonglong * words)()
        for c in self.topo.gpus[h].cpus:
            if c // 64 < words:
                arr[c // 64] |= 1 << (c % 64)
        return arr

    def nvmlDeviceGetNumaNodeId(self, h: int) -> int:
        numa = self.topo.gpus[h].numa
        if len(numa) != 1:
            raise self._err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return numa[0]

    def nvmlDeviceGetTopologyCommonAncestor(self, a: int, b: int) -> int:
        link = self.topo.link(a, b)
        if link.kind == LinkKind.NVLINK:
            # the PCIe path under an NVLink: same or other socket
            same = self.topo.gpus[a].numa == self.topo.gpus[b].numa
            return pynvml.NVML_TOPOLOGY_NODE if same else pynvml.NVML_TOPOLOGY_SYSTEM
        return _LEVEL[link.kind]

    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:
        if link >= 18:
            raise self._err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.NVML_FEATURE_ENABLED if link < len(self.nvlinks[h]) else self.NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: int, link: int) -> Any:
        p = pynvml.nvmlPciInfo_t()
        p.busId = self.nvlinks[h][link].encode()
        return p

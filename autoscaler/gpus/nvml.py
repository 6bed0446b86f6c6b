"""GPU inventory and topology from NVML (the `pynvml` module of nvidia-ml-py).

The module is passed in, so tests can hand over a stand-in built from real
`nvidia-smi topo -m` dumps using NVML's own data structures; production passes
the real pynvml. A GPU whose NVML calls fail is cordoned, not fatal.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any

from autoscaler.gpus.topology import Gpu, Link, LinkKind, Topology

log = logging.getLogger("gpufleet.gpus")

# nvmlDeviceGetTopologyCommonAncestor levels → our link kinds
_ANCESTOR = {0: LinkKind.BOARD, 10: LinkKind.PIX, 20: LinkKind.PXB, 30: LinkKind.PHB, 40: LinkKind.NODE,
             50: LinkKind.SYS}


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _bus(v: Any) -> str:
    # NVML spells bus ids with 8 or 4 hex digits of domain depending on the call; compare the tail.
    return _s(v).lower()[-12:]


def _cpus_from_mask(mask: Any) -> tuple[int, ...]:
    out = []
    for word_i, word in enumerate(mask):
        w = int(word)
        for bit in range(64):
            if w >> bit & 1:
                out.append(word_i * 64 + bit)
    return tuple(out)


def load_pynvml() -> ModuleType:
    return importlib.import_module("pynvml")


def read_topology(nvml: Any | None = None, cpu_words: int = 16) -> Topology:
    """Inventory every visible GPU and every pair's link. Raises nvml.NVMLError if NVML itself fails."""
    nvml = nvml or load_pynvml()
    nvml.nvmlInit()
    try:
        n = nvml.nvmlDeviceGetCount()
        handles: list[Any] = []
        gpus: list[Gpu] = []
        cordoned: dict[int, str] = {}
        for i in range(n):
            try:
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                mem = nvml.nvmlDeviceGetMemoryInfo(h)
                pci = nvml.nvmlDeviceGetPciInfo(h)
                gpu = Gpu(index=i, id=_s(nvml.nvmlDeviceGetUUID(h)), name=_s(nvml.nvmlDeviceGetName(h)),
                          memory_mb=int(mem.total) // (1024 * 1024), pci_bus_id=_s(pci.busId),
                          cpus=_cpus_from_mask(nvml.nvmlDeviceGetCpuAffinity(h, cpu_words)),
                          numa=_numa(nvml, h))
            except nvml.NVMLError as e:
                cordoned[i] = f"NVML: {e}"
                h, gpu = None, Gpu(index=i, id=f"GPU{i}")
            handles.append(h)
            gpus.append(gpu)
        links = _links(nvml, handles, gpus, cordoned)
    finally:
        nvml.nvmlShutdown()
    for i, why in cordoned.items():
        log.warning("GPU%d cordoned: %s", i, why)
    return Topology(tuple(gpus), links, "nvml", frozenset(cordoned), cordoned)


def _numa(nvml: Any, h: Any) -> tuple[int, ...]:
    try:
        node = int(nvml.nvmlDeviceGetNumaNodeId(h))
    except (nvml.NVMLError, AttributeError):
        return ()
    return (node,) if node >= 0 else ()


def _links(nvml: Any, handles: list[Any], gpus: list[Gpu], cordoned: dict[int, str]) -> dict[tuple[int, int], Link]:
    n = len(gpus)
    by_bus = {_bus(g.pci_bus_id): g.index for g in gpus if g.pci_bus_id}
    direct: dict[tuple[int, int], int] = {}
    to_switch = [0] * n
    for i, h in enumerate(handles):
        if h is None:
            continue
        for link in range(nvml.NVML_NVLINK_MAX_LINKS):
            try:
                if nvml.nvmlDeviceGetNvLinkState(h, link) != nvml.NVML_FEATURE_ENABLED:
                    continue
                remote = _bus(nvml.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId)
            except nvml.NVMLError:
                continue  # link index not present on this GPU, or NVLink unsupported
            j = by_bus.get(remote)
            if j is None:
                to_switch[i] += 1  # NVSwitch (or another non-GPU end): all-to-all through the switch
            elif j != i:
                direct[(i, j)] = direct.get((i, j), 0) + 1
    links: dict[tuple[int, int], Link] = {}
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            nv = direct.get((i, j), 0) or direct.get((j, i), 0)
            if not nv and to_switch[i] and to_switch[j]:
                nv = min(to_switch[i], to_switch[j])
            if nv:
                links[(i, j)] = Link(LinkKind.NVLINK, nv)
                continue
            links[(i, j)] = Link(_ancestor(nvml, handles[i], handles[j]))
    return links


def _ancestor(nvml: Any, a: Any, b: Any) -> LinkKind:
    if a is None or b is None:
        return LinkKind.SYS  # a cordoned GPU: assume the worst path
    try:
        return _ANCESTOR.get(int(nvml.nvmlDeviceGetTopologyCommonAncestor(a, b)), LinkKind.SYS)
    except nvml.NVMLError:
        return LinkKind.SYS


def handle(nvml: Any, g: Gpu) -> Any:
    """NVML's handle for a GPU of the topology: by UUID where it has one, so an index that moved cannot mislead."""
    return nvml.nvmlDeviceGetHandleByUUID(g.id) if g.id.startswith("GPU-") else nvml.nvmlDeviceGetHandleByIndex(g.index)


def failing_gpus(nvml: Any, topo: Topology) -> dict[int, str]:
    """GPUs whose NVML calls fail now (lost, fallen off the bus): to be cordoned."""
    bad: dict[int, str] = {}
    nvml.nvmlInit()
    try:
        for g in topo.gpus:
            try:
                nvml.nvmlDeviceGetMemoryInfo(handle(nvml, g))
            except nvml.NVMLError as e:
                bad[g.index] = f"NVML: {e}"
    finally:
        nvml.nvmlShutdown()
    return bad

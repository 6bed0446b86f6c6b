"""The placer the controller asks for GPUs: topology + allocator + cordons.

GPUs are named by id (UUID with NVML, GPU<i> from a topology file, vslot<i>
on a CPU-only host) so the ids in replica labels mean the same after a restart.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

from autoscaler.gpus.allocator import FUTURE_SIZES, Request, allocate
from autoscaler.gpus.settings import GpuConfig
from autoscaler.gpus.slots import Placement
from autoscaler.gpus.topology import Link, LinkKind, Topology, load_topology_file, uniform_topology

log = logging.getLogger("gpufleet.gpus")


def choose_gpus(topo: Topology, blocked: Iterable[str], k: int, *, model: str | None = None,
                min_memory_mb: int = 0, min_link: LinkKind | None = None,
                host_cpus: frozenset[int] | None = None, future: Sequence[int] | None = None) -> Placement | None:
    """The GPUs (and NUMA-local cores) for a k-GPU replica, none of them `blocked`. Pure.

    host_cpus: the cores this host has (None: virtual slots, no CPU pinning).
    future: the multi-GPU replica sizes to keep placeable (default: 2, 4, 8).
    """
    if k == 0:
        return Placement(())
    blocked = set(blocked)
    idx = {g.index for g in topo.gpus if g.id in blocked}
    a = allocate(topo, Request(k=k, model=model, min_memory_mb=min_memory_mb, min_link=min_link), idx,
                 future=FUTURE_SIZES if future is None else future)
    if a is None:
        return None
    ids = tuple(topo.gpus[i].id for i in a.gpus)
    cpus: set[int] = set()
    for i in a.gpus:
        cpus.update(topo.gpus[i].cpus)
    local = tuple(sorted(cpus & host_cpus)) if host_cpus is not None else ()
    note = f"weakest link {a.weakest}" if a.weakest else "single GPU"
    return Placement(ids, local, note)


class TopologyPlacer:
    def __init__(self, topo: Topology, nvml: Any | None = None, host_cpus: set[int] | None = None,
                 agent: Any | None = None, note: str = "") -> None:
        self.topo = topo
        self.nvml = nvml  # the pynvml module, where this process sees the GPUs
        self.agent = agent  # autoscaler.gpus.nvml_agent.NvmlAgent: NVML through the compose stack's helper
        self.note = note  # why the GPUs are what they are (e.g. no NVIDIA runtime: virtual slots)
        self.host_cpus = host_cpus if host_cpus is not None else set(os.sched_getaffinity(0))
        self.cordoned: dict[str, str] = {topo.gpus[i].id: why for i, why in topo.cordon_reasons.items()}

    @property
    def reads_gpus(self) -> bool:
        """Real GPUs whose readings NVML gives (here or through the helper)."""
        return self.nvml is not None or self.agent is not None

    def readings(self) -> list[Any]:
        """DCGM-named readings of every GPU (blocking: call it in a thread)."""
        if self.agent is not None:
            return list(self.agent.readings())
        from autoscaler.gpus.telemetry import read_nvml

        return read_nvml(self.nvml, self.topo)

    @property
    def virtual(self) -> bool:
        return self.topo.source.endswith("virtual slots")

    def cordon(self, gpu_id: str, reason: str) -> None:
        if gpu_id not in self.cordoned:
            log.warning("cordoning %s: %s", gpu_id, reason)
        self.cordoned[gpu_id] = reason

    def place(self, k: int, used: Iterable[str], *, model: str | None = None,
              min_memory_mb: int = 0, min_link: LinkKind | None = None) -> Placement | None:
        return choose_gpus(self.topo, set(used) | set(self.cordoned), k, model=model, min_memory_mb=min_memory_mb,
                           min_link=min_link, host_cpus=None if self.virtual else frozenset(self.host_cpus))

    def failing(self) -> dict[str, str]:
        """GPUs whose NVML calls now fail and are not cordoned yet. Only reads: safe in a thread."""
        if self.agent is not None:
            found = self.agent.failing()
        elif self.nvml is None:
            return {}
        else:
            from autoscaler.gpus.nvml import failing_gpus

            found = {self.topo.gpus[i].id: why for i, why in failing_gpus(self.nvml, self.topo).items()}
        return {gid: why for gid, why in found.items() if gid not in self.cordoned}

    def health_check(self) -> dict[str, str]:
        """Cordon GPUs whose NVML calls now fail; returns the new ones."""
        new = self.failing()
        for gid, why in new.items():
            self.cordon(gid, why)
        return new


def make_placer(cfg: GpuConfig) -> TopologyPlacer:
    if cfg.source == "topology":
        assert cfg.topology_file is not None
        return TopologyPlacer(load_topology_file(cfg.topology_file))
    if cfg.source in ("nvml", "auto"):
        try:
            from autoscaler.gpus.nvml import load_pynvml, read_topology

            nvml = load_pynvml()
            topo = read_topology(nvml)
            if topo.n:
                log.info("NVML: %d GPUs", topo.n)
                return TopologyPlacer(topo, nvml)
            if cfg.source == "nvml":
                raise RuntimeError("gpus.source is nvml but NVML sees no GPU")
        except Exception as e:
            if cfg.source == "nvml":
                raise RuntimeError(f"gpus.source is nvml but NVML is not usable: {e}") from e
            log.info("no NVML (%s): CPU-only host, %d virtual slots", e, cfg.virtual_slots)
    return TopologyPlacer(uniform_topology(cfg.virtual_slots, Link(LinkKind.PHB)))

"""Choose the placer for the configured GPU source."""

from __future__ import annotations

from autoscaler.config import GpuConfig
from autoscaler.gpus.slots import VirtualSlots


def make_placer(cfg: GpuConfig) -> VirtualSlots:
    return VirtualSlots(cfg.virtual_slots)

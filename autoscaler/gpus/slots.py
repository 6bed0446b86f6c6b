"""Slot accounting shared by every placer: which device ids replicas hold."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from autoscaler.runtime.base import Replica


@dataclass(frozen=True)
class Placement:
    gpus: tuple[str, ...]
    cpus: tuple[int, ...] = ()
    note: str = ""


def held(replicas: Iterable[Replica]) -> dict[str, str]:
    """device id → replica id. Two replicas on one id is a bug the caller must see."""
    out: dict[str, str] = {}
    for r in replicas:
        for g in r.gpus:
            if g in out:
                raise RuntimeError(f"GPU {g} assigned twice: {out[g]} and {r.id}")
            out[g] = r.id
    return out


class VirtualSlots:
    """CPU-only host: `n` interchangeable slots, so replica counts stay bounded like GPUs."""

    def __init__(self, n: int) -> None:
        self.ids = tuple(f"vslot{i}" for i in range(n))
        self.cordoned: set[str] = set()

    def place(self, k: int, used: Iterable[str], **_: object) -> Placement | None:
        if k == 0:
            return Placement(())
        taken = set(used) | self.cordoned
        free = [i for i in self.ids if i not in taken]
        return Placement(tuple(free[:k]), note="virtual slots") if len(free) >= k else None

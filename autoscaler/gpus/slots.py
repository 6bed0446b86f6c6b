"""What a placement is, and which device ids the replicas hold."""

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

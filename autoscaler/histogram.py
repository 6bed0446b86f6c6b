"""A histogram the collectors export as Prometheus buckets: counts kept per bucket, cumulated on export."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass
class Hist:
    bounds: tuple[float, ...]  # ascending upper bounds; +Inf is implied
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) as HistogramMetricFamily wants them, +Inf last."""
        out, acc = [], 0
        for le, n in zip([*(f"{b:g}" for b in self.bounds), "+Inf"], self.counts, strict=True):
            acc += n
            out.append((le, float(acc)))
        return out

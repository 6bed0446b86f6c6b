"""Prometheus file_sd targets for the replicas, written atomically (temp + rename)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from autoscaler.runtime.base import Replica


def targets_document(replicas: Sequence[Replica]) -> list[dict[str, object]]:
    return [
        {"targets": [r.upstream], "labels": {"pool": r.pool, "replica": r.id, "role": r.role,
                                              "model": r.model}}
        for r in sorted(replicas, key=lambda r: r.id) if r.alive
    ]


class TargetsWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._last: str | None = None

    def write(self, replicas: Sequence[Replica]) -> None:
        text = json.dumps(targets_document(replicas), indent=1)
        if text == self._last:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)
        self._last = text

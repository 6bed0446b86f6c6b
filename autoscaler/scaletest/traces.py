"""Readers for public LLM request traces, in their published formats.

- Azure LLM inference trace 2023 (CSV): TIMESTAMP (YYYY-MM-DD HH:MM:SS.fffffff), ContextTokens, GeneratedTokens
- Mooncake FAST'25 (JSONL): timestamp (ms from start), input_length, output_length, hash_ids
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class TraceRequest:
    t: float  # seconds from the first request
    prompt_tokens: int
    output_tokens: int


class TraceError(ValueError):
    pass


def _azure_time(s: str) -> datetime:
    # 100 ns resolution: 7 fractional digits, one more than %f takes
    head, _, frac = s.strip().partition(".")
    return datetime.strptime(f"{head}.{(frac + '000000')[:6]}", "%Y-%m-%d %H:%M:%S.%f")


def load_azure_csv(path: Path) -> list[TraceRequest]:
    out: list[TraceRequest] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise TraceError(f"{path}: expected columns {sorted(need)}, got {reader.fieldnames}")
        t0: datetime | None = None
        for lineno, row in enumerate(reader, start=2):
            try:
                ts = _azure_time(row["TIMESTAMP"])
                t0 = t0 or ts
                out.append(TraceRequest((ts - t0).total_seconds(), int(row["ContextTokens"]),
                                        int(row["GeneratedTokens"])))
            except (ValueError, TypeError) as e:
                raise TraceError(f"{path}:{lineno}: {e}") from None
    return out


def load_mooncake_jsonl(path: Path) -> list[TraceRequest]:
    out: list[TraceRequest] = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                out.append(TraceRequest(float(d["timestamp"]) / 1000.0, int(d["input_length"]),
                                        int(d["output_length"])))
            except (ValueError, KeyError, TypeError) as e:
                raise TraceError(f"{path}:{lineno}: {e}") from None
    if out:
        t0 = out[0].t
        out = [TraceRequest(r.t - t0, r.prompt_tokens, r.output_tokens) for r in out]
    return out


def load_trace(path: Path, fmt: str = "auto") -> list[TraceRequest]:
    if fmt == "auto":
        fmt = "mooncake" if path.suffix in (".jsonl", ".json") else "azure"
    if fmt == "azure":
        return load_azure_csv(path)
    if fmt == "mooncake":
        return load_mooncake_jsonl(path)
    raise TraceError(f"unknown trace format {fmt!r} (azure or mooncake)")

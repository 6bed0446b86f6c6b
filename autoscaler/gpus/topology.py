"""The GPU topology model, and a parser for `nvidia-smi topo -m` text.

The model is what the allocator needs: per GPU its identity, memory and CPU/NUMA
affinity; per pair the link. NVML (nvml.py) and the text parser fill the same
model, so placement does not care where the topology came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any


class LinkKind(IntEnum):
    """PCIe common ancestor or NVLink; a higher value is a better link."""

    SYS = 1  # across the SMP interconnect between NUMA nodes (sockets)
    NODE = 2  # between host bridges within one NUMA node
    PHB = 3  # through a PCIe host bridge (the CPU)
    PXB = 4  # through several PCIe switches, not the host bridge
    PIX = 5  # at most one PCIe switch
    BOARD = 6  # same board (NVML's INTERNAL: multi-GPU cards)
    NVLINK = 7


@dataclass(frozen=True, order=True)
class Link:
    kind: LinkKind
    nvlinks: int = 0  # bonded NVLinks, for kind NVLINK

    @property
    def score(self) -> int:
        """Comparable strength: every NVLink beats every PCIe path, more links beat fewer."""
        if self.kind == LinkKind.NVLINK:
            return 100 * max(self.nvlinks, 1)
        return 10 * int(self.kind)

    def __str__(self) -> str:
        return f"NV{self.nvlinks}" if self.kind == LinkKind.NVLINK else self.kind.name


@dataclass(frozen=True)
class Gpu:
    index: int
    id: str  # UUID from NVML; "GPU<i>" from a topology file
    name: str = ""
    memory_mb: int = 0  # 0 = unknown
    pci_bus_id: str = ""
    cpus: tuple[int, ...] = ()  # CPU affinity (NUMA-local cores)
    numa: tuple[int, ...] = ()  # NUMA node(s)


@dataclass(frozen=True)
class Topology:
    gpus: tuple[Gpu, ...]
    links: dict[tuple[int, int], Link] = field(compare=False)  # both (i, j) and (j, i)
    source: str = ""
    cordoned: frozenset[int] = frozenset()
    cordon_reasons: dict[int, str] = field(default_factory=dict, compare=False)

    def link(self, i: int, j: int) -> Link:
        return self.links[(i, j)]

    @property
    def n(self) -> int:
        return len(self.gpus)


class TopologyParseError(ValueError):
    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.line = line


_SPLIT = re.compile(r"\t| {2,}")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # nvidia-smi underlines the header on a terminal
_MULTI_WORD = (("GPU", "NUMA", "ID"), ("CPU", "Affinity"), ("NUMA", "Affinity"))


def _header_columns(line: str) -> list[str]:
    """Column names, however the header is separated: tabs (current drivers), runs of spaces, or single
    spaces (older drivers print the header unlike the rows); multi-word names are put back together."""
    words = _ANSI.sub("", line).split()
    out: list[str] = []
    i = 0
    while i < len(words):
        for name in _MULTI_WORD:
            if tuple(words[i:i + len(name)]) == name:
                out.append(" ".join(name))
                i += len(name)
                break
        else:
            out.append(words[i])
            i += 1
    return out
_CELL = re.compile(r"^(X|SYS|SOC|NODE|PHB|PXB|PIX|NV(\d+))$")
_OLD_NAMES = {"SOC": "SYS"}  # legends before NODE existed called cross-socket SOC


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """'0-23,48-71' → (0, 1, ..., 71); '' / 'N/A' → ()."""
    text = text.strip()
    if not text or text.upper() == "N/A":
        return ()
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return tuple(out)


def _cell(token: str, source: str, lineno: int) -> Link | None:
    t = token.strip()
    m = _CELL.match(t)
    if not m:
        raise TopologyParseError(source, lineno, f"unknown link {t!r} (expected X, NV#, PIX, PXB, PHB, NODE, SYS)")
    if t == "X":
        return None
    if m.group(2):
        return Link(LinkKind.NVLINK, int(m.group(2)))
    return Link(LinkKind[_OLD_NAMES.get(t, t)])


def parse_topo_matrix(text: str, source: str = "topology") -> Topology:
    lines = [_ANSI.sub("", ln) for ln in text.splitlines()]
    # The header names the columns and has no 'X' cell; rows have one on the diagonal.
    header_no = next((i for i, ln in enumerate(lines) if "GPU0" in _header_columns(ln)
                      and "X" not in ln.split()), None)
    if header_no is None:
        raise TopologyParseError(source, 1, "no header line with GPU0 (is this `nvidia-smi topo -m` output?)")
    header = _header_columns(lines[header_no])
    devices = header[: header.index("CPU Affinity")] if "CPU Affinity" in header else header
    for d in devices:
        if " " in d:
            raise TopologyParseError(source, header_no + 1, f"unexpected column {d!r}")
    gpu_cols = [i for i, d in enumerate(devices) if re.fullmatch(r"GPU\d+", d)]
    n = len(gpu_cols)
    if n == 0:
        raise TopologyParseError(source, header_no + 1, "no GPU columns")
    rows: dict[str, tuple[int, list[str]]] = {}
    for i in range(header_no + 1, len(lines)):
        ln = lines[i]
        if not ln.strip():
            break  # the matrix ends at the first blank line (legends follow)
        fields = _SPLIT.split(ln)
        label = fields[0].strip()
        if not label:
            raise TopologyParseError(source, i + 1, "row without a device name")
        rows[label] = (i + 1, fields[1:])
    gpus: list[Gpu] = []
    links: dict[tuple[int, int], Link] = {}
    for gi, col in enumerate(gpu_cols):
        name = devices[col]
        if name not in rows:
            raise TopologyParseError(source, header_no + 1, f"column {name} has no row")
        lineno, fields = rows[name]
        if len(fields) < len(devices):
            raise TopologyParseError(source, lineno, f"{name}: {len(fields)} fields, "
                                     f"expected at least {len(devices)} (one per device column)")
        for gj, colj in enumerate(gpu_cols):
            link = _cell(fields[colj], source, lineno)
            if (gi == gj) != (link is None):
                raise TopologyParseError(source, lineno, f"{name}/{devices[colj]}: 'X' belongs on the "
                                         "diagonal only")
            if link is not None:
                links[(gi, gj)] = link
        for colk in range(len(devices)):  # NIC cells: validated, not used for placement
            _cell(fields[colk], source, lineno)
        rest = [f.strip() for f in fields[len(devices):]]
        try:
            cpus = parse_cpu_list(rest[0]) if rest else ()
            numa = parse_cpu_list(rest[1]) if len(rest) > 1 else ()
        except ValueError:
            raise TopologyParseError(source, lineno, f"{name}: bad CPU/NUMA affinity {rest[:2]}") from None
        gpus.append(Gpu(index=gi, id=name, cpus=cpus, numa=numa))
    for (i, j), link in links.items():
        if links.get((j, i)) != link:
            raise TopologyParseError(source, rows[devices[gpu_cols[i]]][0],
                                     f"GPU{i}/GPU{j} is {link} but GPU{j}/GPU{i} is {links.get((j, i))}")
    return Topology(tuple(gpus), links, source)


def load_topology_file(path: Path) -> Topology:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise TopologyParseError(str(path), 0, f"cannot read: {e.strerror}") from None
    return parse_topo_matrix(text, str(path))


def uniform_topology(n: int, link: Link, prefix: str = "vslot") -> Topology:
    """n interchangeable devices (CPU-only virtual slots)."""
    gpus = tuple(Gpu(index=i, id=f"{prefix}{i}") for i in range(n))
    links = {(i, j): link for i in range(n) for j in range(n) if i != j}
    return Topology(gpus, links, f"{n} virtual slots")


def render_matrix(topo: Topology, holders: dict[str, str] | None = None) -> str:
    """The matrix the way `nvidia-smi topo -m` shows it, plus affinity and who holds each GPU."""
    holders = holders or {}
    names = [f"GPU{g.index}" for g in topo.gpus]
    w = max(6, *(len(str(topo.links[(i, j)])) + 2 for (i, j) in topo.links)) if topo.links else 6
    head = " " * 8 + "".join(n.ljust(w) for n in names) + "CPU Affinity".ljust(20) + "NUMA".ljust(8) + "Held by"
    out = [head]
    for g in topo.gpus:
        cells = ["X" if i == g.index else str(topo.link(g.index, i)) for i in range(topo.n)]
        holder = holders.get(g.id, "")
        if g.index in topo.cordoned:
            holder = f"CORDONED ({topo.cordon_reasons.get(g.index, 'error')})"
        out.append(f"GPU{g.index}".ljust(8) + "".join(c.ljust(w) for c in cells)
                   + format_ranges(g.cpus).ljust(20) + (format_ranges(g.numa) or "-").ljust(8) + holder)
    if all(g.id == f"GPU{g.index}" and not (g.name or g.memory_mb) for g in topo.gpus):
        return "\n".join(out)  # a topology file: nothing more to say per GPU
    out.append("")
    for g in topo.gpus:
        extra = ", ".join(x for x in (g.name, f"{g.memory_mb} MiB" if g.memory_mb else "", g.pci_bus_id) if x)
        out.append(f"GPU{g.index}: {g.id}" + (f" ({extra})" if extra else ""))
    return "\n".join(out)


def format_ranges(xs: tuple[int, ...]) -> str:
    if not xs:
        return ""
    parts, start, prev = [], xs[0], xs[0]
    for x in (*xs[1:], None):
        if x is not None and x == prev + 1:
            prev = x
            continue
        parts.append(f"{start}-{prev}" if prev != start else str(start))
        if x is not None:
            start = prev = x
    return ",".join(parts)


def topology_to_json(topo: Topology) -> dict[str, object]:
    return {
        "source": topo.source,
        "gpus": [{"index": g.index, "id": g.id, "name": g.name, "memory_mb": g.memory_mb,
                  "pci_bus_id": g.pci_bus_id, "cpus": list(g.cpus), "numa": list(g.numa)} for g in topo.gpus],
        "links": [[i, j, str(link)] for (i, j), link in sorted(topo.links.items()) if i < j],
        "cordoned": {str(i): why for i, why in topo.cordon_reasons.items()},
    }


def parse_link(text: str) -> Link:
    m = _CELL.match(text)
    if not m or text == "X":
        if text == "BOARD":
            return Link(LinkKind.BOARD)
        raise ValueError(f"not a link: {text!r}")
    return Link(LinkKind.NVLINK, int(m.group(2))) if m.group(2) else Link(LinkKind[_OLD_NAMES.get(text, text)])


def topology_from_json(d: dict[str, Any]) -> Topology:
    gpus = tuple(Gpu(index=g["index"], id=g["id"], name=g.get("name", ""), memory_mb=g.get("memory_mb", 0),
                     pci_bus_id=g.get("pci_bus_id", ""), cpus=tuple(g.get("cpus", ())),
                     numa=tuple(g.get("numa", ()))) for g in d["gpus"])
    links: dict[tuple[int, int], Link] = {}
    for i, j, text in d["links"]:
        links[(i, j)] = links[(j, i)] = parse_link(text)
    reasons = {int(i): why for i, why in d.get("cordoned", {}).items()}
    return Topology(gpus, links, d.get("source", ""), frozenset(reasons), reasons)

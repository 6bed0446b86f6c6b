"""What clients saw at the gateway: nginx's access log, one UDP syslog datagram a request, as metrics.

Per route figures (pool, model, status, latency) come from the access log because only nginx knows
which pool a request went to (njs sets `$gf_route`) and what it answered, including the requests it
refused itself (401 without a key, 429 from a limit) that never reach a replica. Connection-level
figures (accepted, active, handled) come from nginx's stub_status through Debian's
`prometheus-nginx-exporter`, where it is installed.

UDP: a slow or absent autoscaler never slows a request; a lost datagram loses one count, and a line
that does not parse is counted as such, never raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from autoscaler.histogram import Hist

log = logging.getLogger("gpufleet.edge")

# seconds, as clients see a whole request: a short completion to a long held stream
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
NONE = "none"  # the pool or model label of a request refused before routing (401, 429, a bad body)
REFUSALS = ("400", "401", "404", "413", "429", "503")  # what nginx answers before any pool is chosen
OTHER = "other"  # a name that is not in fleet.yaml: never a label of its own (cardinality)


@dataclass(frozen=True)
class EdgeRecord:
    pool: str
    model: str
    status: str
    seconds: float
    retries: int = 0  # replicas tried before the one that answered (nginx's proxy_next_upstream)


def replicas_tried(upstream_addr: str) -> int:
    """How many replicas nginx sent one request to: $upstream_addr lists them with ", " (" : " separates the
    groups of an internal redirect, of which only the last, the pool's, went to replicas)."""
    last = upstream_addr.rsplit(" : ", 1)[-1].strip()
    return len([a for a in last.split(",") if a.strip() and a.strip() != "-"])


def parse_line(line: str, pools: Iterable[str], models: Iterable[str]) -> EdgeRecord | None:
    """One syslog datagram of the `gpufleet_edge` log format → a record; None for what is not an API
    request (/health, probes). Raises ValueError for text that is not such a line."""
    i = line.find("{")
    if i < 0:
        raise ValueError("no JSON in the line")
    try:
        d = json.loads(line[i:])
        uri, status, rt = str(d["uri"]), str(d["status"]), float(d["rt"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a gpufleet_edge line: {e}") from None
    if not uri.startswith(("/v1/", "/_pool")):
        return None
    if not (status.isdigit() and len(status) == 3):
        raise ValueError(f"status {status!r} is not an HTTP status")
    route = str(d.get("route") or "")
    pool = NONE
    if route.startswith("pool="):
        name = route[5:].split(";", 1)[0]
        pool = name if name in set(pools) else OTHER
    model = str(d.get("model") or "")
    model = (model if model in set(models) else OTHER) if model else NONE
    retries = max(replicas_tried(str(d.get("up") or "")) - 1, 0) if pool != NONE else 0
    return EdgeRecord(pool, model, status, max(rt, 0.0), retries)


@dataclass
class EdgeStats:
    """Counters since start (Prometheus takes a restart's reset as a counter reset)."""

    pools: tuple[str, ...]
    models: tuple[str, ...]
    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    latency: dict[str, Hist] = field(default_factory=dict)  # per pool
    lines: Counter[str] = field(default_factory=Counter)  # parsed, ignored, unparsable
    retries: Counter[str] = field(default_factory=Counter)  # per pool

    def __post_init__(self) -> None:
        # the gateway's own refusals from 0, so the first one is an increase Prometheus can see
        for status in REFUSALS:
            self.requests.setdefault((NONE, NONE, status), 0)

    def add_line(self, line: str) -> None:
        try:
            rec = parse_line(line, self.pools, self.models)
        except ValueError as e:
            self.lines["unparsable"] += 1
            log.debug("edge log line not understood: %s: %r", e, line[:200])
            return
        if rec is None:
            self.lines["ignored"] += 1
            return
        self.lines["parsed"] += 1
        self.requests[(rec.pool, rec.model, rec.status)] += 1
        self.latency.setdefault(rec.pool, Hist(BUCKETS)).observe(rec.seconds)
        if rec.retries:
            self.retries[rec.pool] += rec.retries

    def metrics(self) -> Iterator[Metric]:
        reqs = CounterMetricFamily("gpufleet_edge_requests", "API requests answered by the gateway, by the pool "
                                   "that served (none: refused before routing) and status", labels=["pool", "model",
                                                                                                   "status"])
        for (pool, model, status), n in sorted(self.requests.items()):
            reqs.add_metric([pool, model, status], n)
        yield reqs
        hist = HistogramMetricFamily("gpufleet_edge_request_duration_seconds", "Request time as nginx saw it "
                                     "(first byte in to last byte out)", labels=["pool"])
        for pool, h in sorted(self.latency.items()):
            hist.add_metric([pool], h.buckets(), h.sum)
        yield hist
        retried = CounterMetricFamily("gpufleet_edge_retries", "Requests nginx sent to another replica of the pool "
                                      "because the one it tried answered nothing (refused, reset, closed)",
                                      labels=["pool"])
        for pool in sorted(set(self.pools) | set(self.retries)):
            retried.add_metric([pool], self.retries[pool])
        yield retried
        lines = CounterMetricFamily("gpufleet_edge_log_lines", "Access-log datagrams received, by what became "
                                    "of them", labels=["result"])
        for result in ("parsed", "ignored", "unparsable"):
            lines.add_metric([result], self.lines[result])
        yield lines


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, stats: EdgeStats) -> None:
        self.stats = stats

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.stats.add_line(data.decode("utf-8", "replace"))


async def listen_unix(stats: EdgeStats, path: Path) -> asyncio.DatagramTransport:
    """Receive the access log on a unix datagram socket (Docker: in the volume the gateway mounts read-only;
    a socket takes datagrams through a read-only mount). nginx's workers run as another user: mode 0666."""
    loop = asyncio.get_running_loop()
    path.unlink(missing_ok=True)  # a previous run's: binding needs the name free
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(stats), local_addr=str(path),
                                                           family=socket.AF_UNIX)
    except OSError as e:
        raise RuntimeError(f"cannot receive the gateway's access log on {path} ({e.strerror}): set "
                           f"gateway.edge_log_port to null to go without edge metrics") from None
    os.chmod(path, 0o666)
    return transport


async def listen(stats: EdgeStats, host: str, port: int) -> asyncio.DatagramTransport:
    """Receive the gateway's access log on UDP host:port (the caller closes the transport)."""
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(stats), local_addr=(host, port))
    except OSError as e:
        raise RuntimeError(f"cannot receive the gateway's access log on UDP {host}:{port} ({e.strerror}): "
                           f"set gateway.edge_log_port to a free port, or null to go without edge metrics") from None
    return transport

"""Why a request failed, by evidence: the replica that served it and the fault injected on that replica.

A chaos test sends every request with its own X-Request-Id. nginx's access log writes it (`rid=`) with the
upstream address(es) it used; the test records which replica had which address while it ran, and when
each replica left nginx's config (`unrouted`). A failed request is excused only by

- a fault injected on a replica that served it (from the response's X-Gpufleet-Replica, or nginx's log),
  if it was in flight when the fault took effect (a SIGSTOP: or sent before nginx dropped the replica); or
- a refused connection (nothing listening) while nginx itself was restarted.

Anything else (a failure during an autoscaler restart, on a healthy replica, with no evidence) is
unexplained, and each fault may excuse at most `cap` requests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

_LINE = re.compile(r'"(?P<req>[^"]*)" (?P<status>\d{3}) .* up=(?P<up>.*?) ut=.* rid=(?P<rid>\S*)\s*$')
REPLICA_FAULTS = ("kill_replica", "stop_replica", "poison_metrics")


def access_log(lines: Iterable[str]) -> dict[str, tuple[int, tuple[str, ...]]]:
    """rid → (status, upstream addresses tried, in order) from nginx's `gpufleet` log format."""
    out: dict[str, tuple[int, tuple[str, ...]]] = {}
    for line in lines:
        m = _LINE.search(line)
        if not m or m.group("rid") in ("", "-"):
            continue
        # nginx writes ", " between upstreams tried, " : " across an internal redirect
        ups = tuple(u for u in re.split(r"\s*[,:]\s+", m.group("up").strip()) if u not in ("", "-"))
        out[m.group("rid")] = (int(m.group("status")), ups)
    return out


@dataclass
class Failure:
    rid: str
    t0: float
    t1: float
    error: str
    refused: bool = False  # nothing was listening: the connection was refused
    replica: str | None = None  # the response's X-Gpufleet-Replica, where one came


@dataclass
class Verdict:
    excused: dict[str, list[str]] = field(default_factory=dict)  # fault → the requests it excuses
    unexplained: list[str] = field(default_factory=list)
    over_cap: dict[str, int] = field(default_factory=dict)


class Addresses:
    """Which replica held an upstream address when: Docker hands a dead container's IP to the next one it
    starts (within a second here), so an address alone does not name a replica."""

    def __init__(self) -> None:
        self._held: dict[str, list[tuple[float, str]]] = {}

    def saw(self, address: str, replica: str, t: float) -> None:
        if address.startswith(":"):  # a container that has died has no address any more
            return
        held = self._held.setdefault(address, [])
        if not held or held[-1][1] != replica:
            held.append((t, replica))

    def at(self, address: str, t: float) -> str | None:
        held = self._held.get(address, [])
        before = [r for since, r in held if since <= t]
        # seen only after t: the first holder seen held it already (a replica is seen once it is listed)
        return before[-1] if before else (held[0][1] if held else None)


class Serving:
    """Which replicas the pool served with (active and ready, as /status said) over time."""

    def __init__(self) -> None:
        self._seen: list[tuple[float, frozenset[str]]] = []

    def saw(self, t: float, replicas: Iterable[str]) -> None:
        self._seen.append((t, frozenset(replicas)))

    def at(self, t: float) -> frozenset[str]:
        before = [s for when, s in self._seen if when <= t]
        return before[-1] if before else frozenset()


def first_after(events: Iterable[Mapping], kind: str, faults: Sequence[Mapping],
                slack_s: float = 1.0) -> dict[str, float]:
    """For each faulted replica, when the first `kind` event (unrouted, stop) of it came after its fault. Not
    simply its first: a replica drained and brought back before the fault (a warm replica activated again,
    in an earlier test on a shared stack) left the config long before the fault."""
    out: dict[str, float] = {}
    for fault in faults:
        rep = fault.get("replica")
        times = sorted(e["t"] for e in events
                       if e["kind"] == kind and e.get("replica") == rep and e["t"] >= fault["t"] - slack_s)
        if rep and times:
            out[rep] = times[0]
    return out


def judge(failures: Sequence[Failure], faults: Sequence[Mapping], replica_at: Addresses,
          unrouted_at: Mapping[str, float], gateway_down: Sequence[tuple[float, float]],
          log: Mapping[str, tuple[int, tuple[str, ...]]], cap: int, slack_s: float = 0.3,
          stopped_at: Mapping[str, float] | None = None, serving: Serving | None = None) -> Verdict:
    """faults: {"kind", "t", "replica"?}; replica_at: which replica held an upstream address when;
    unrouted_at / stopped_at: when each replica left nginx's config / was stopped (from the events).
    slack_s: the test's and the fault's clocks are the same host's; this is the signal's own delay.

    When a replica fault excuses a request that replica served:
    - SIGKILL: if in flight at the kill; sent after it, only while the killed replica was the pool's only
      serving one (nginx retries a refused connect on another replica: with one to retry on, a request that
      failed there is the gateway's failure).
    - poisoned metrics: only if in flight when the autoscaler stopped it (it served well until then).
    - SIGSTOP: if in flight at the stop, or sent before nginx dropped it (the kernel still accepts the
      connection of a stopped process, so nothing is refused and nothing retried).
    """
    v = Verdict()
    stopped_at = stopped_at or {}
    for f in failures:
        served = {f.replica} if f.replica else set()
        served |= {r for u in log.get(f.rid, (0, ()))[1] if (r := replica_at.at(u, f.t0))}
        why = None
        for fault in faults:
            rep = fault.get("replica")
            if fault["kind"] not in REPLICA_FAULTS or rep not in served or f.refused:
                continue
            if fault["kind"] == "stop_replica":
                hit = f.t1 >= fault["t"] and f.t0 <= unrouted_at.get(rep, fault["t"] + 30) + slack_s
            else:
                at = fault["t"] if fault["kind"] == "kill_replica" else stopped_at.get(rep, fault["t"] + 30)
                hit = f.t0 <= at + slack_s and f.t1 >= at - slack_s
                if not hit and fault["kind"] == "kill_replica" and serving is not None:
                    alone = not (serving.at(f.t0) - {rep})
                    hit = alone and fault["t"] <= f.t1 and f.t0 <= unrouted_at.get(rep, fault["t"] + 30) + slack_s
            if hit:
                why = f"{fault['kind']} {rep} at {fault['t']:.1f}"
                break
        if why is None and f.refused:
            for a, b in gateway_down:
                if a - slack_s <= f.t1 <= b + slack_s:
                    why = f"restart_gateway at {a:.1f}"
                    break
        if why is None:
            line = log.get(f.rid)
            nginx = f" nginx: {line[0]} via {', '.join(line[1]) or '-'}" if line else " nginx: no line"
            v.unexplained.append(f"{f.rid} {f.t0:.1f}-{f.t1:.1f} replica={sorted(served) or '?'}{nginx} "
                                 f"{f.error[:100]}")
        else:
            v.excused.setdefault(why, []).append(f.rid)
    v.over_cap = {k: len(x) for k, x in v.excused.items() if len(x) > cap}
    return v

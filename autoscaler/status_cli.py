"""`gpufleet status`: the live fleet as a person reads it (or its /status as JSON), and whether it is healthy."""

from __future__ import annotations

from typing import Any

from autoscaler.status import FleetStatus

ROLES = ("active", "warm", "starting", "draining")
STALE_TICK_S = 30.0  # a loop that has not finished a tick for this long is stuck, not slow


def problems(st: FleetStatus, now: float) -> list[str]:
    """What makes the fleet unhealthy now: a stuck loop, a pool whose step raised, a pool in crash backoff or
    short of GPUs for what it wants active. Empty: healthy. (A failed gateway reload is shown, not judged: the
    count is since start, and the next reload may have succeeded.)"""
    out = []
    if st.last_tick_at is None or now - st.last_tick_at > STALE_TICK_S:
        age = "never" if st.last_tick_at is None else f"{now - st.last_tick_at:.0f} s ago"
        out.append(f"the control loop's last tick ended {age}")
    for name, p in st.pools.items():
        if p.error:
            out.append(f"pool {name}: its step failed: {p.error}")
        if p.backoff_until is not None and p.backoff_until > now:
            why = f" ({p.backoff_reason})" if p.backoff_reason else ""
            out.append(f"pool {name}: crash backoff for {p.backoff_until - now:.0f} s{why}")
        elif p.unmet:  # (in a backoff nothing is placed: that is the backoff, said above)
            why = f": {p.no_capacity}" if p.no_capacity else ""
            out.append(f"pool {name}: {p.unmet} active replica(s) wanted and not placeable{why}")
    return out


def _ago(now: float, t: float | None) -> str:
    return "-" if t is None else f"{now - t:.0f}s ago"


def format_status(st: FleetStatus, now: float, events: int = 10) -> str:
    lines = [f"runtime {st.runtime}   ticks {st.ticks} (last {_ago(now, st.last_tick_at)}, "
             f"{(st.last_tick_s or 0) * 1000:.0f} ms)   gateway reloads {st.gateway.reloads}, errors "
             f"{st.gateway.errors}   auth {'on' if st.gateway.auth else 'OFF'}"]
    lines.append("")
    lines.append(f"{'pool':<14} {'model':<22} {'desired':>7} " + " ".join(f"{r:>8}" for r in ROLES)
                 + f" {'held':>5}  state")
    for name, p in st.pools.items():
        counts = {r: sum(1 for x in p.replicas if x.role == r) for r in ROLES}
        ready = sum(1 for x in p.replicas if x.role == "active" and x.ready)
        state = []
        if p.panic:
            state.append("panic")
        if p.saturated:
            state.append("saturated")
        if p.error:
            state.append("error")
        if p.backoff_until is not None and p.backoff_until > now:
            state.append("backoff")
        elif p.unmet:
            state.append(f"unmet {p.unmet}")
        desired = "-" if p.desired_active is None else str(p.desired_active)
        active = f"{ready}/{counts['active']}" if ready != counts["active"] else str(counts["active"])
        lines.append(f"{name:<14} {p.model[:22]:<22} {desired:>7} {active:>8} "
                     + " ".join(f"{counts[r]:>8}" for r in ROLES[1:]) + f" {p.held:>5}  {', '.join(state) or 'ok'}")
        if p.reason:
            lines.append(f"{'':<14} why: {p.reason}")
    lines.append("")
    lines.append(f"{'replica':<22} {'pool':<14} {'role':<9} {'ready':<5} {'load':>5} {'since':>9}  gpus")
    for name, p in st.pools.items():
        for r in sorted(p.replicas, key=lambda r: (ROLES.index(r.role) if r.role in ROLES else 9, r.id)):
            role = r.role + ("→" + r.target_role if r.target_role != r.role else "")
            lines.append(f"{r.id:<22} {name:<14} {role:<9} {'yes' if r.ready else 'no':<5} {r.load:>5.1f} "
                         f"{_ago(now, r.role_since):>9}  {','.join(r.gpus) or '-'}"
                         + ("  (asleep)" if r.sleeping else ""))
    if events:
        lines.append("")
        lines.append(f"last {min(events, len(st.events))} events:")
        for e in st.events[-events:]:
            extra: dict[str, Any] = {k: v for k, v in (e.model_extra or {}).items()
                                     if k in ("replica", "reason", "desired_active", "role", "error")}
            detail = " ".join(f"{k}={v}" for k, v in extra.items())
            lines.append(f"  {_ago(now, e.t):>9}  {e.kind:<16} {e.pool or '':<14} {detail}"[:160])
    bad = problems(st, now)
    lines.append("")
    lines.append("healthy" if not bad else "NOT HEALTHY:\n" + "\n".join(f"  - {b}" for b in bad))
    return "\n".join(lines)


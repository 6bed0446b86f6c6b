"""Which pool serves a request: the gateway's routing table, and when a pool overflows. Pure.

nginx's njs handler (templates/gateway.js) applies the table to each request:

1. rules (fleet.yaml `routing.rules`), in order: the first whose conditions all hold (the request's
   model, the API key's tier, a header's value, the prompt's estimated length) picks the pool;
2. else the `model` field, or one of the pool's aliases;
3. the pool serves unless it has no serving replica or is *saturated* (a state file the autoscaler
   rewrites every tick, so overflow needs no reload); then its fallback chain, in order, each
   fallback optionally capping `max_tokens`;
4. nothing serves: the activator holds the request for the chosen pool (scale from zero).

Whenever the pool that serves is not the one whose model the client named, or a cap applies, the
body is rewritten (`model` = the serving pool's model, `max_tokens` capped): a replica (vLLM
included) answers only to its own model name. The response's `model` field and the
`X-Gpufleet-Route` header (`pool=<name>; reason=<why>`) say who served and why.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoscaler.gateway.settings import Saturation

STATE_FILE = "pool-state.json"
# the gateway ignores a state file older than this: a dead autoscaler must not pin a pool as saturated
STATE_STALE_S = 10.0
CHARS_PER_TOKEN = 4  # the prompt-length estimate njs makes from the body


def pick_pool(pools: Sequence[str], serving: Collection[str], hot: Mapping[str, bool]) -> int:
    """Which pool of the chain (the chosen pool, then its fallbacks) serves: its index, -1 for none. First a
    pool that serves and is not saturated; else any that serves (an overloaded pool beats none). gateway.js
    `pickPool` is the same rule, run by nginx per request; the simulator runs this one (one table tests both)."""
    for i, p in enumerate(pools):
        if p in serving and not hot.get(p):
            return i
    return next((i for i, p in enumerate(pools) if p in serving), -1)


@dataclass(frozen=True)
class SaturationState:
    saturated: bool = False
    since: float | None = None  # when it began overflowing
    value: float | None = None  # waiting per serving replica at the last tick


def next_saturation(sat: Saturation | None, waiting: float, ready: int, prev: SaturationState,
                    now: float) -> SaturationState:
    """Whether a pool overflows to its fallbacks from now on (hysteresis: in at `waiting_per_replica`,
    out below `clear_below` and not before `hold_s`). A pool with no serving replica is not
    'saturated': the gateway already falls back for it."""
    if sat is None or ready == 0:
        return SaturationState()
    per = waiting / ready
    if prev.saturated:
        if per < sat.clear and prev.since is not None and now - prev.since >= sat.hold_s:
            return SaturationState(value=per)
        return SaturationState(True, prev.since, per)
    if per >= sat.waiting_per_replica:
        return SaturationState(True, now, per)
    return SaturationState(value=per)


def state_document(saturated: Mapping[str, bool], now: float) -> dict[str, Any]:
    """What the autoscaler writes to STATE_FILE for njs each tick."""
    return {"t": now, "saturated": sorted(p for p, s in saturated.items() if s)}

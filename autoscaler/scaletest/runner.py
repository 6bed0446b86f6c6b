"""`gpufleet scale-test`: drive a running stack, watch the autoscaler, report.

Works against any running stack (local or Docker): it only needs the gateway
and the autoscaler's admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
from pydantic import ValidationError

from autoscaler.scaletest.loadgen import Result, bearer, run_open_loop
from autoscaler.scaletest.report import format_summary, plot_timeline, role_counts, summarize
from autoscaler.scaletest.scenario import Scenario, Trace, arrivals
from autoscaler.status import FleetStatus


class NoStack(RuntimeError):
    pass


@dataclass
class Run:
    sc: Scenario
    url: str
    admin: str
    token: str | None = None
    api_key: str | None = None  # the gateway's
    out: TextIO = sys.stdout
    timeline: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


def preflight(url: str, admin: str, headers: dict[str, str],
              api_key: str | None = None) -> tuple[list[str], dict[str, Any]]:
    try:
        r = httpx.get(f"{url}/v1/models", timeout=3, headers=bearer(api_key))
        if r.status_code == 401:
            raise NoStack("the gateway wants an API key: --api-key KEY (or GPUFLEET_API_KEY); the local stack "
                          "made one on first start in run/api-keys.default-key")
        models = r.raise_for_status().json()
        status = httpx.get(f"{admin}/status", headers=headers, timeout=3).raise_for_status().json()
    except (httpx.HTTPError, ValueError) as e:
        raise NoStack(f"no gpufleet stack answering at {url} (gateway) and {admin} (admin API): "
                      f"{type(e).__name__}. Start one with `gpufleet up --local` or `make up`.") from None
    return [m["id"] for m in models["data"]], status


async def _poll(run: Run, stop: asyncio.Event, interval: float = 0.5) -> None:
    warned = False
    async with httpx.AsyncClient(timeout=2, headers=run.headers) as c:
        while not stop.is_set():
            try:
                r = await c.get(f"{run.admin}/status")
                doc = r.json()
                FleetStatus.model_validate(doc)  # an autoscaler of another version says so, once
                run.timeline.append((time.time(), doc))
            except ValidationError as e:
                if not warned:
                    print(f"\nscale-test: /status is not in the shape this version reads: {e}", file=run.out)
                    warned = True
            except (httpx.HTTPError, ValueError):
                pass  # a missed poll is a gap in the plot, not a failed test
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


async def _progress(run: Run, t0: float, sched: list[float], pool: str, stop: asyncio.Event) -> None:
    tty = run.out.isatty()
    n = 0
    while not stop.is_set():
        await asyncio.sleep(1.0)
        n += 1
        if not tty and n % 5:
            continue  # a log file gets a line every 5 s, a terminal one line updated every second
        el = time.time() - t0
        sent = sum(1 for a in sched if a <= el)
        last = sum(1 for a in sched if el - 1 < a <= el)
        done = len(run.results)
        errs = sum(1 for r in run.results if not r.ok)
        roles = role_counts(run.timeline[-1][1], pool) if run.timeline else {}
        line = (f"\r[{el:6.1f}/{run.sc.duration_s:.0f}s] offered {last:3d} req/s  in flight {sent - done:4d}  "
                f"done {done:5d}  errors {errs:3d}  replicas " + " ".join(f"{k}={v}" for k, v in roles.items()))
        print(line if tty else line.lstrip("\r"), end="" if tty else "\n", file=run.out, flush=True)
    if tty:
        print(file=run.out)


async def execute(run: Run, base_dir: Path) -> dict[str, Any]:
    models, status = preflight(run.url, run.admin, run.headers, run.api_key)
    model = run.sc.model or models[0]
    pool = next((n for n, p in status["pools"].items() if p["model"] == model), None)
    if pool is None:
        raise NoStack(f"model {model!r} is not served by this stack (it serves: {', '.join(models)})")
    sched = arrivals(run.sc, base_dir)
    stop = asyncio.Event()
    t0 = time.time()
    poller = asyncio.create_task(_poll(run, stop))
    progress = asyncio.create_task(_progress(run, t0, [a.at for a in sched], pool, stop))
    results = await run_open_loop(run.url, model, sched, max_in_flight=run.sc.max_in_flight,
                                  on_result=run.results.append, api_key=run.api_key)
    t_end = time.time()
    await asyncio.sleep(1.0)  # one more poll after the last response
    stop.set()
    await asyncio.gather(poller, progress)
    extra: dict[str, Any] = {"model": model, "started_at": t0, "scheduled": len(sched)}
    if isinstance(run.sc.profile, Trace):
        p = run.sc.profile
        extra["trace"] = {"path": str(p.path), "time_compression": p.time_compression,
                          "rate_scale": p.rate_scale, "start_s": p.start_s,
                          "max_prompt_tokens": run.sc.max_prompt_tokens,
                          "max_output_tokens": run.sc.max_output_tokens}
    return summarize(run.sc, results, run.timeline, t0, t_end, pool, extra)


def compact_timeline(timeline: list[tuple[float, dict[str, Any]]], t0: float) -> list[dict[str, Any]]:
    out = []
    for t, st in timeline:
        pools = {}
        for name, p in st.get("pools", {}).items():
            pools[name] = {"roles": role_counts(st, name), "desired_active": p.get("desired_active"),
                           "desired_warm": p.get("desired_warm"), "panic": p.get("panic"),
                           "signals": p.get("signals")}
        out.append({"t": round(t - t0, 3), "pools": pools})
    return out


def write_report(run: Run, summary: dict[str, Any], out_dir: Path, plot: bool = True) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = summary["started_at"]
    events: dict[tuple, dict] = {}
    for _, st in run.timeline:
        for e in st.get("events", []):
            if e["t"] >= t0:
                events[(e["t"], e["kind"], e.get("replica"))] = {**e, "t": round(e["t"] - t0, 3)}
    upstreams: dict[str, str] = {}
    for _, st in run.timeline:
        for p in st.get("pools", {}).values():
            upstreams.update({r["id"]: r["upstream"] for r in p["replicas"]})
    report = {
        "summary": summary,
        "replica_upstreams": [upstreams],
        "scenario": run.sc.model_dump(mode="json"),
        "timeline": compact_timeline(run.timeline, t0),
        "events": sorted(events.values(), key=lambda e: e["t"]),
        "requests": [{**r.to_dict(), "sent": round(r.sent - t0, 4)} for r in run.results],
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    text = format_summary(summary)
    (out_dir / "summary.txt").write_text(text + "\n")
    if plot:
        plot_timeline(out_dir / "timeline.png", run.results, run.timeline, t0, summary["pool"],
                      f"gpufleet scale-test: {run.sc.name} ({summary['requests']} requests)")

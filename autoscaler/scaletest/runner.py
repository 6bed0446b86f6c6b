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


async def _progress(run: Run, t0: float, sched: list[float], pools: list[str], stop: asyncio.Event) -> None:
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
        shown = []
        for pool in pools:
            roles = role_counts(run.timeline[-1][1], pool) if run.timeline else {}
            counts = " ".join(f"{k}={v}" for k, v in roles.items())
            shown.append(f"{pool}: {counts}" if len(pools) > 1 else counts)
        line = (f"\r[{el:6.1f}/{run.sc.duration_s:.0f}s] offered {last:3d} req/s  in flight {sent - done:4d}  "
                f"done {done:5d}  errors {errs:3d}  replicas " + "  ".join(shown))
        print(line if tty else line.lstrip("\r"), end="" if tty else "\n", file=run.out, flush=True)
    if tty:
        print(file=run.out)


def _pool_of(model: str, models: list[str], status: dict[str, Any]) -> str:
    pool: str | None = next((n for n, p in status["pools"].items() if p["model"] == model), None)
    if pool is None:
        raise NoStack(f"model {model!r} is not served by this stack (it serves: {', '.join(models)})")
    return pool


async def execute(run: Run, base_dir: Path) -> dict[str, Any]:
    models, status = preflight(run.url, run.admin, run.headers, run.api_key)
    if run.sc.streams:
        return await _execute_streams(run, base_dir, models, status)
    model = run.sc.model or models[0]
    pool = _pool_of(model, models, status)
    sched = arrivals(run.sc, base_dir)
    stop = asyncio.Event()
    t0 = time.time()
    poller = asyncio.create_task(_poll(run, stop))
    progress = asyncio.create_task(_progress(run, t0, [a.at for a in sched], [pool], stop))
    results = await run_open_loop(run.url, model, sched, max_in_flight=run.sc.max_in_flight,
                                  on_result=run.results.append, api_key=run.api_key,
                                  timeout_s=run.sc.request_timeout_s)
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


async def _execute_streams(run: Run, base_dir: Path, models: list[str], status: dict[str, Any]) -> dict[str, Any]:
    """Several models at once: each stream its own open loop; a summary per pool, SLOs met only if all are."""
    subs = [run.sc.stream(i) for i in range(len(run.sc.streams))]
    pools = [_pool_of(s.model or "", models, status) for s in subs]
    scheds = [arrivals(s, base_dir) for s in subs]
    per: list[list[Result]] = [[] for _ in subs]
    stop = asyncio.Event()
    t0 = time.time()
    poller = asyncio.create_task(_poll(run, stop))
    progress = asyncio.create_task(_progress(run, t0, sorted(a.at for sc in scheds for a in sc), pools, stop))

    def sink(i: int) -> Any:
        def add(r: Result) -> None:
            r.pool = pools[i]
            per[i].append(r)
            run.results.append(r)
        return add

    await asyncio.gather(*(run_open_loop(run.url, s.model or "", sched, max_in_flight=s.max_in_flight,
                                         on_result=sink(i), api_key=run.api_key, timeout_s=s.request_timeout_s)
                           for i, (s, sched) in enumerate(zip(subs, scheds, strict=True))))
    t_end = time.time()
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(poller, progress)
    streams = {pool: summarize(s, per[i], run.timeline, t0, t_end, pool,
                               {"model": s.model, "started_at": t0, "scheduled": len(scheds[i])})
               for i, (s, pool) in enumerate(zip(subs, pools, strict=True))}
    return streams_summary(run.sc.name, t0, streams)


def streams_summary(scenario: str, t0: float, streams: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The summary of a scenario of several streams: one per pool, met only if every pool's is."""
    return {"scenario": scenario, "pool": None, "started_at": t0, "streams": streams,
            "requests": sum(x["requests"] for x in streams.values()),
            "slo_met": all(x["slo_met"] for x in streams.values())}


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
    events: dict[tuple[Any, ...], dict[str, Any]] = {}
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
    text = format_any(summary)
    (out_dir / "summary.txt").write_text(text + "\n")
    if not plot:
        return
    if "streams" in summary:  # one timeline per pool
        for pool, s in summary["streams"].items():
            mine = [r for r in run.results if r.pool == pool]
            plot_timeline(out_dir / f"timeline-{pool}.png", mine, run.timeline, t0, pool,
                          f"gpufleet scale-test: {run.sc.name}, pool {pool} ({s['requests']} requests)")
        return
    plot_timeline(out_dir / "timeline.png", run.results, run.timeline, t0, summary["pool"],
                  f"gpufleet scale-test: {run.sc.name} ({summary['requests']} requests)")


def format_any(summary: dict[str, Any]) -> str:
    """One summary, or one per pool for a scenario of several streams."""
    if "streams" in summary:
        return "\n\n".join(format_summary(s) for s in summary["streams"].values())
    return format_summary(summary)

"""The autoscaler's admin API: /status (JSON), /metrics (Prometheus), /healthz.

Bound to 127.0.0.1 (local) or the compose network only. With a token set,
everything but /healthz needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from autoscaler.controller import Controller
from autoscaler.gpus.topology import topology_to_json
from autoscaler.runtime.base import ROLES


class FleetCollector(Collector):
    def __init__(self, c: Controller) -> None:
        self.c = c

    def collect(self) -> Iterator[Metric]:
        c = self.c
        desired = GaugeMetricFamily("gpufleet_desired_replicas", "Desired replicas by pool and kind",
                                    labels=["pool", "kind"])
        replicas = GaugeMetricFamily("gpufleet_replicas", "Replicas by pool and role",
                                     labels=["pool", "role"])
        panic = GaugeMetricFamily("gpufleet_panic", "1 while the pool is in panic mode", labels=["pool"])
        sig = GaugeMetricFamily("gpufleet_signal", "Latest pool signal", labels=["pool", "signal"])
        for p in c.cfg.pools:
            st = c.states[p.name]
            if st.decision:
                desired.add_metric([p.name, "active"], st.decision.desired_active)
                desired.add_metric([p.name, "warm"], st.decision.desired_warm)
                panic.add_metric([p.name], 1.0 if st.decision.panic else 0.0)
            for role in ROLES:
                replicas.add_metric([p.name, role],
                                    sum(1 for r in c.replicas if r.pool == p.name and r.role == role))
            if st.signals:
                s = st.signals[-1]
                for name, val in (("running", s.running), ("waiting", s.waiting),
                                  ("kv_cache_usage", s.kv_usage), ("ttft_p95_s", s.ttft_p95_s),
                                  ("request_rate", s.request_rate), ("ready", s.ready)):
                    if val is not None:
                        sig.add_metric([p.name, name], float(val))
        yield from (desired, replicas, panic, sig)
        g = c.gateway.stats
        yield CounterMetricFamily("gpufleet_gateway_reloads", "nginx reloads", value=g.reloads)
        yield CounterMetricFamily("gpufleet_gateway_errors", "Renders or nginx -t that failed "
                                  "(last good config kept)", value=g.render_errors)
        events = CounterMetricFamily("gpufleet_events", "Controller events by kind",
                                     labels=["kind", "pool"])
        for (kind, pool), n in sorted(c.event_counts.items()):
            events.add_metric([kind, pool], n)
        yield events
        yield CounterMetricFamily("gpufleet_ticks", "Control loop ticks", value=c.ticks)
        yield CounterMetricFamily("gpufleet_tick_errors", "Control loop ticks that raised", value=c.tick_errors)
        if c.last_tick_at is not None:
            yield GaugeMetricFamily("gpufleet_last_tick_timestamp_seconds", "When the last tick ended",
                                    value=c.last_tick_at)
        if c.tick_seconds:
            yield GaugeMetricFamily("gpufleet_tick_duration_seconds", "How long the last tick took",
                                    value=c.tick_seconds[-1])
        backoff = GaugeMetricFamily("gpufleet_pool_backoff_seconds", "Seconds until the pool may cold-start "
                                    "again (crash loop)", labels=["pool"])
        for p in c.cfg.pools:
            backoff.add_metric([p.name], max(c.states[p.name].backoff_until - c.clock(), 0.0))
        yield backoff
        unmet = GaugeMetricFamily("gpufleet_pool_unmet_replicas", "Active replicas the pool wants and has no "
                                  "GPUs for (even by reclaim from lower-priority pools)", labels=["pool"])
        saturated = GaugeMetricFamily("gpufleet_pool_saturated", "1 while the pool's new requests overflow to "
                                      "its fallbacks", labels=["pool"])
        claims = GaugeMetricFamily("gpufleet_pool_claims", "Replicas of other pools giving up GPUs for this one",
                                   labels=["pool", "kind"])
        for p in c.cfg.pools:
            st = c.states[p.name]
            unmet.add_metric([p.name], st.unmet)
            saturated.add_metric([p.name], 1.0 if st.saturation.saturated else 0.0)
            for kind in ("reclaim", "move"):
                claims.add_metric([p.name, kind], sum(1 for x in st.claims.values() if x.kind == kind))
        yield from (unmet, saturated, claims)
        sleeping = GaugeMetricFamily("gpufleet_replicas_sleeping", "Warm replicas in sleep mode", labels=["pool"])
        for p in c.cfg.pools:
            sleeping.add_metric([p.name], sum(1 for r in c.replicas if r.pool == p.name and r.role == "warm"
                                              and (h := c.health.get(r.id)) is not None and h.sleeping))
        yield sleeping
        if c.activator is not None:
            held = GaugeMetricFamily("gpufleet_held_requests", "Requests the activator holds (pool at zero)",
                                     labels=["pool"])
            fwd = CounterMetricFamily("gpufleet_activator_forwarded", "Held requests forwarded to a replica",
                                      labels=["pool"])
            tmo = CounterMetricFamily("gpufleet_activator_timeouts", "Held requests answered 503 (hold timeout)",
                                      labels=["pool"])
            for p in c.cfg.pools:
                held.add_metric([p.name], c.activator.held.get(p.name, 0))
                fwd.add_metric([p.name], c.activator.forwarded.get(p.name, 0))
                tmo.add_metric([p.name], c.activator.timed_out.get(p.name, 0))
            yield from (held, fwd, tmo)


class AdminServer(uvicorn.Server):
    """uvicorn for the admin API, leaving SIGINT/SIGTERM to the stack that runs it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def create_admin_app(controller: Controller, token: str | None = None) -> FastAPI:
    app = FastAPI(title="gpufleet autoscaler")
    registry = CollectorRegistry()
    registry.register(FleetCollector(controller))

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Response:
        if token and request.url.path != "/healthz":
            got = request.headers.get("authorization", "")
            # as bytes: compare_digest refuses non-ASCII str, and a header may hold any byte
            if not secrets.compare_digest(got.encode("utf-8", "surrogateescape"),
                                          f"Bearer {token}".encode("utf-8", "surrogateescape")):
                return JSONResponse({"error": {"message": "missing or wrong admin token",
                                               "type": "authentication_error"}}, status_code=401)
        return await call_next(request)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "ticks": controller.ticks}

    @app.get("/status")
    async def status() -> dict[str, Any]:
        return controller.status().as_json()

    @app.get("/gpus")
    async def gpus() -> dict[str, Any]:
        """Topology, holders and cordons: what `gpufleet gpus` shows of the live fleet."""
        topo = controller.placer.topo
        reasons = {g.index: controller.placer.cordoned[g.id] for g in topo.gpus if g.id in controller.placer.cordoned}
        topo = replace(topo, cordoned=frozenset(reasons), cordon_reasons=reasons)
        holders = {d.id: d.held_by for d in controller.gpu_status().devices if d.held_by}
        return {"topology": topology_to_json(topo), "holders": holders}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app

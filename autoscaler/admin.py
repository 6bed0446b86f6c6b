"""The autoscaler's admin API: /status (JSON), /metrics (Prometheus), /healthz.

Bound to 127.0.0.1 (local) or the compose network only. With a token set,
everything but /healthz needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_go_float

from autoscaler.controller import Controller
from autoscaler.gateway.edge import EdgeStats
from autoscaler.gpus.telemetry import dcgm_metrics
from autoscaler.gpus.topology import topology_to_json
from autoscaler.loop.actions import SCALE_EVENTS
from autoscaler.runtime.base import ROLES

# prometheus_client's own spelling of a float (as in a bucket's `le`), typed: the library's function is not
_go_float: Callable[[float], str] = _untyped_go_float


# `/metrics` names of a pool's latest signals: each its own metric, so each has one unit
POOL_SIGNALS = {
    "running": ("gpufleet_pool_running_requests", "Requests being generated on the pool's ready replicas"),
    "waiting": ("gpufleet_pool_waiting_requests", "Requests queued in the pool's ready replicas' engines"),
    "kv_cache_usage": ("gpufleet_pool_kv_cache_usage_ratio", "KV-cache usage, mean over the ready replicas (0-1)"),
    "ttft_p95_s": ("gpufleet_pool_ttft_p95_seconds", "TTFT p95 over the pool's metric window"),
    "request_rate": ("gpufleet_pool_finished_requests_per_second", "Requests finished per second, whole pool"),
    "ready": ("gpufleet_pool_ready_replicas", "Routed replicas that are ready"),
}
# the policy's signals (fleet.yaml `targets:`), as metric name stems with their unit
POLICY_SIGNALS = {
    "queue_depth": ("waiting_requests", "Waiting requests"),
    "concurrency": ("concurrent_requests", "Concurrent requests (running + waiting)"),
    "kv_cache_usage": ("kv_cache_usage_ratio", "KV-cache usage (0-1)"),
    "ttft_p95_s": ("ttft_p95_seconds", "TTFT p95"),
    "request_rate": ("finished_requests_per_second", "Requests finished per second"),
}

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
        # the pool's latest signals, one metric (one unit) each
        sig = {name: GaugeMetricFamily(metric, help_, labels=["pool"])
               for name, (metric, help_) in POOL_SIGNALS.items()}
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
                # a signal the pool's engine exports nothing for is absent, not a 0 that looks measured
                missing = set(c.engine(p.name).missing_signals())
                for name, val in (("running", s.running), ("waiting", s.waiting),
                                  ("kv_cache_usage", s.kv_usage), ("ttft_p95_s", s.ttft_p95_s),
                                  ("request_rate", s.request_rate), ("ready", s.ready)):
                    if val is not None and name not in missing:
                        sig[name].add_metric([p.name], float(val))
        yield from (desired, replicas, panic, *sig.values())
        yield from self._decisions()
        yield from self._gpus()
        g = c.gateway.stats
        yield CounterMetricFamily("gpufleet_gateway_reloads", "nginx reloads", value=g.reloads)
        yield CounterMetricFamily("gpufleet_gateway_errors", "Renders or nginx -t that failed "
                                  "(last good config kept)", value=g.render_errors)
        reload_s = HistogramMetricFamily("gpufleet_gateway_reload_seconds", "From nginx -t to nginx serving the "
                                         "new config")
        reload_s.add_metric([], g.reload_seconds.buckets(), g.reload_seconds.sum)
        yield reload_s
        events = CounterMetricFamily("gpufleet_events", "Controller events by kind",
                                     labels=["kind", "pool"])
        # every pool's scale events from 0: an annotation (increase) sees the first one too
        counts = {(k, p.name): 0 for p in c.cfg.pools for k in SCALE_EVENTS} | dict(c.recorder.event_counts)
        for (kind, pool), n in sorted(counts.items()):
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


    def _decisions(self) -> Iterator[Metric]:
        c = self.c
        # per signal, one metric (one unit): what the policy last saw per ready replica, and the pool's target
        per = {n: GaugeMetricFamily(f"gpufleet_policy_{base}", f"{what}, per ready replica, as the policy last saw "
                                    "it (over its metric window)", labels=["pool"])
               for n, (base, what) in POLICY_SIGNALS.items()}
        target = {n: GaugeMetricFamily(f"gpufleet_policy_{base}_target", f"The pool's target for {what.lower()}, "
                                       "per replica", labels=["pool"]) for n, (base, what) in POLICY_SIGNALS.items()}
        slo = GaugeMetricFamily("gpufleet_pool_slo_ttft_bound_info", "1, labelled with the TTFT histogram bound "
                                "(`bound`, as the engine spells `le`) that is the pool's SLO: join a bucket rate on "
                                "it to read attainment", labels=["pool", "bound"])
        slo_s = GaugeMetricFamily("gpufleet_pool_slo_ttft_seconds", "The pool's TTFT SLO (slo.ttft_s)", labels=["pool"])
        objective = GaugeMetricFamily("gpufleet_pool_slo_objective", "Share of requests the pool promises within "
                                      "its TTFT SLO", labels=["pool"])
        for p in c.cfg.pools:
            d = c.states[p.name].decision
            for name, value, tgt in d.signals if d else ():
                per[name].add_metric([p.name], value)
                target[name].add_metric([p.name], tgt)
            for name, tgt in p.targets.model_dump(exclude_none=True).items():
                if not d or not any(n == name for n, _, _ in d.signals):
                    target[name].add_metric([p.name], float(tgt))
            # prometheus_client's (and vLLM's) spelling of the bound, so the label matches the bucket's
            slo.add_metric([p.name, _go_float(p.slo.ttft_s)], 1.0)
            slo_s.add_metric([p.name], p.slo.ttft_s)
            objective.add_metric([p.name], p.slo.objective)
        decisions = CounterMetricFamily("gpufleet_scale_decisions", "Changes of a pool's desired replicas, by "
                                        "direction and what drove them (a signal, panic, held_requests, none)",
                                        labels=["pool", "direction", "driver"])
        # each pool's ups and downs by every driver it can have, from 0: the first one is an increase too
        drivers = {(p.name, d, drv): 0 for p in c.cfg.pools for d in ("up", "down")
                   for drv in (*p.targets.model_dump(exclude_none=True), "panic", "held_requests", "none")}
        for (pool, direction, driver), n in sorted((drivers | dict(c.recorder.decisions)).items()):
            decisions.add_metric([pool, direction, driver], n)
        yield from (*per.values(), *target.values(), slo, slo_s, objective, decisions)

    def _gpus(self) -> Iterator[Metric]:
        c = self.c
        yield from dcgm_metrics(c.gpu_readings)
        holders = {g: r for r in c.replicas for g in r.gpus}
        holder = GaugeMetricFamily("gpufleet_gpu_holder", "1 per GPU: the replica, pool and role holding it (role "
                                   "free or cordoned when none); join DCGM_FI_* on UUID",
                                   labels=["gpu", "UUID", "pool", "replica", "role"])
        for g in c.placer.topo.gpus:
            r = holders.get(g.id)
            role = r.role if r else "cordoned" if g.id in c.placer.cordoned else "free"
            holder.add_metric([str(g.index), g.id, r.pool if r else "", r.id if r else "", role], 1.0)
        yield holder
        links = GaugeMetricFamily("gpufleet_gpu_link", "The link between two GPUs as `nvidia-smi topo -m` names it "
                                  "(link label); the value is the NVLink count, 0 for PCIe paths",
                                  labels=["gpu", "peer", "link"])
        topo = c.placer.topo
        for (i, j), link in sorted(topo.links.items()):
            links.add_metric([f"GPU{i}", f"GPU{j}", str(link)], float(link.nvlinks))
        yield links
        secs = CounterMetricFamily("gpufleet_gpu_seconds", "GPU-seconds held by replicas, by pool and role (the "
                                   "cost counter)", labels=["pool", "role"])
        for p in c.cfg.pools:
            for role in ROLES:
                secs.add_metric([p.name, role], c.recorder.gpu_seconds.get((p.name, role), 0.0))
        yield secs
        yield CounterMetricFamily("gpufleet_gpu_idle_seconds", "GPU-seconds no replica held (cordoned GPUs not "
                                  "counted)", value=c.recorder.idle_gpu_seconds)


class EdgeCollector(Collector):
    def __init__(self, stats: EdgeStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from self.stats.metrics()


class AdminServer(uvicorn.Server):
    """uvicorn for the admin API, leaving SIGINT/SIGTERM to the stack that runs it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def create_admin_app(controller: Controller, token: str | None = None, edge: EdgeStats | None = None) -> FastAPI:
    app = FastAPI(title="gpufleet autoscaler")
    registry = CollectorRegistry()
    registry.register(FleetCollector(controller))
    if edge is not None:
        registry.register(EdgeCollector(edge))

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Response:
        if token and request.url.path != "/healthz":
            got = request.headers.get("authorization", "")
            # as bytes: compare_digest refuses non-ASCII str, and a header may hold any byte
            if not secrets.compare_digest(got.encode("utf-8", "surrogateescape"),
                                          f"Bearer {token}".encode("utf-8", "surrogateescape")):
                return JSONResponse({"error": {"message": "missing or wrong admin token",
                                               "type": "authentication_error"}}, status_code=401)
        response: Response = await call_next(request)
        return response

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
        holders = {g: r.id for r in controller.replicas for g in r.gpus}
        return {"topology": topology_to_json(topo), "holders": holders, "note": getattr(controller.placer, "note", "")}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app

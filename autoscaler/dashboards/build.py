"""gpufleet's Grafana dashboards, as code: `python -m autoscaler.dashboards.build` writes grafana/dashboards/*.json.

Built with grafana-foundation-sdk (Grafana's own typed builders, generated from its schemas) rather than
hand-kept JSON: a typo in a field is an AttributeError here, not a panel Grafana silently drops. The JSON is
committed (Grafana provisions it, `gpufleet dashboards --png` renders it) and a test checks it is what this
module builds. Stable uids; the datasource by uid (the provisioned one).

Every panel's queries return data on a fleet that has served a few requests (a test runs them on the live
Prometheus), and every time-series panel carries the scale events as annotations.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, table, timeseries
from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    VariableOption,
    VariableRefresh,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from autoscaler.loop.actions import SCALE_EVENTS

DATASOURCE = DataSourceRef(type_val="prometheus", uid="gpufleet-prometheus")
OUT = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"
POOL = 'pool=~"$pool"'
RATE = "$__rate_interval"

# annotation name → (event kinds, colour): every scale event kind is in exactly one
ANNOTATIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "Scale events": (("start", "activate", "promote", "drain", "demote", "stop", "sleep", "wake"), "blue"),
    "Panic, reclaim, failures": (("panic", "reclaim", "move", "crash", "start_failed", "start_timeout"), "red"),
}
assert sorted(k for kinds, _ in ANNOTATIONS.values() for k in kinds) == sorted(SCALE_EVENTS)
ANNOTATION_STEP = "5s"
ANNOTATION_WINDOW = "15s"  # > step + the scrape interval (5 s in compose): each event lands in a window


def annotation_expr(kinds: tuple[str, ...], pool_filter: bool) -> str:
    sel = f'kind=~"{"|".join(kinds)}"' + (f", {POOL}" if pool_filter else "")
    return f"sum by (kind, pool) (increase(gpufleet_events_total{{{sel}}}[{ANNOTATION_WINDOW}])) > 0"


def q(expr: str, legend: str = "", instant: bool = False) -> prometheus.Dataquery:
    d = prometheus.Dataquery().expr(expr).datasource(DATASOURCE)
    if legend:
        d = d.legend_format(legend)
    return d.instant() if instant else d.range()


def ts(title: str, unit: str, *targets: prometheus.Dataquery, description: str = "", span: int = 12,
       min_val: float | None = 0) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).span(span).height(8)
         .legend(VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM)
                 .show_legend(True)))
    if description:
        p = p.description(description)
    if min_val is not None:
        p = p.min(min_val)
    for i, t in enumerate(targets):
        p = p.with_target(t.ref_id(chr(ord("A") + i)))
    return p


def tbl(title: str, *targets: prometheus.Dataquery, description: str = "", span: int = 12,
        transformation: DataTransformerConfig | None = None) -> table.Panel:
    p = table.Panel().title(title).datasource(DATASOURCE).span(span).height(8)
    if description:
        p = p.description(description)
    for i, t in enumerate(targets):
        p = p.with_target(t.format(PromQueryFormat.TABLE).ref_id(chr(ord("A") + i)))
    if transformation is not None:
        p = p.with_transformation(transformation)
    return p


def _dashboard(uid: str, title: str, description: str, panels: list[Any], pool_var: bool) -> dict[str, Any]:
    d = (db.Dashboard(title).uid(uid).description(description).tags(["gpufleet"]).refresh("10s")
         .time("now-30m", "now").tooltip(DashboardCursorSync.CROSSHAIR).readonly())
    if pool_var:
        d = d.with_variable(
            db.QueryVariable("pool").label("pool").datasource(DATASOURCE).query("label_values(gpufleet_replicas, pool)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*")
            .current(VariableOption(selected=True, text="All", value="$__all")))
    for name, (_, colour) in ANNOTATIONS.items():
        d = d.annotation(db.AnnotationQuery().name(name).datasource(DATASOURCE).enable(True).icon_color(colour))
    for i, p in enumerate(panels, 1):
        d = d.with_panel(p.id(i))
    out: dict[str, Any] = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    # Prometheus annotation fields the SDK's generic AnnotationQuery does not model
    for a, (kinds, _) in zip(out["annotations"]["list"], ANNOTATIONS.values(), strict=True):
        a.update(expr=annotation_expr(kinds, pool_var), step=ANNOTATION_STEP, titleFormat="{{kind}} {{pool}}",
                 tagKeys="kind,pool", useValueForTime=False)
    return out


def fleet() -> dict[str, Any]:
    return _dashboard("gpufleet-fleet", "gpufleet — fleet", "All pools at a glance: what clients offered and got, "
                      "replicas by role, SLO attainment, errors.", [
        ts("Offered vs served (requests/s)", "reqps",
           q(f"sum(rate(gpufleet_edge_requests_total[{RATE}]))", "offered at the gateway"),
           q(f'sum(rate(gpufleet_edge_requests_total{{status=~"2.."}}[{RATE}]))', "answered 2xx"),
           q(f"sum by (pool) (rate(gpufleet:replica_requests_finished_total[{RATE}]))",
             "{{pool}} finished by replicas"),
           description="Offered: every API request nginx answered, refused ones included."),
        ts("Replicas by role", "short", q("sum by (role) (gpufleet_replicas)", "{{role}}")),
        ts("TTFT SLO attainment (5 m)", "percentunit",
           q("1 - gpufleet:ttft_slo_errors:ratio_rate5m", "{{pool}}"),
           q("max by (pool) (gpufleet_pool_slo_objective)", "{{pool}} objective"),
           description="Share of first tokens within each pool's slo.ttft_s, against its objective.", min_val=None),
        ts("Not 2xx at the gateway (requests/s)", "reqps",
           q(f'sum by (status) (rate(gpufleet_edge_requests_total{{status!~"2.."}}[{RATE}]))', "{{status}}"),
           description="401: no or wrong key; 404: unknown model; 429: a limit or a full queue; 503: no replica "
                       "within the hold timeout."),
        ts("Desired vs active replicas", "short",
           q('sum by (pool) (gpufleet_desired_replicas{kind="active"})', "{{pool}} desired"),
           q('sum by (pool) (gpufleet_replicas{role="active"})', "{{pool}} active")),
        ts("Waiting and held requests", "short",
           q("sum by (pool) (gpufleet:replica_requests_waiting)", "{{pool}} waiting in replicas"),
           q("sum by (pool) (gpufleet_held_requests)", "{{pool}} held by the activator")),
        ts("GPUs by holder role", "short", q("count by (role) (gpufleet_gpu_holder)", "{{role}}")),
        ts("Gateway connections (nginx stub_status)", "short",
           q("sum(nginx_connections_active)", "active"),
           q("sum(nginx_connections_waiting)", "idle keep-alive"),
           q(f"sum(rate(nginx_connections_accepted[{RATE}]))", "accepted /s"),
           description="Debian's prometheus-nginx-exporter on nginx's stub_status: what the whole gateway holds, "
                       "streams and keep-alives included."),
        ts("Autoscaler: tick and reload latency", "s",
           q("gpufleet_tick_duration_seconds", "tick"),
           q("histogram_quantile(0.95, sum by (le) (rate(gpufleet_gateway_reload_seconds_bucket[5m])))",
             "nginx reload p95 (5 m)")),
    ], pool_var=False)


def pool() -> dict[str, Any]:
    return _dashboard("gpufleet-pool", "gpufleet — pool", "One pool (or several): the signals the autoscaler "
                      "read against their targets, what it decided and why, latency against the SLO.", [
        # one metric per signal (each its unit): gpufleet_policy_<signal> and gpufleet_policy_<signal>_target
        ts("Signals per replica vs targets", "short",
           q(f'{{__name__=~"gpufleet_policy_.+",__name__!~".+_target",{POOL}}}', "{{pool}} {{__name__}}"),
           q(f'{{__name__=~"gpufleet_policy_.+_target",{POOL}}}', "{{pool}} {{__name__}}")),
        ts("Scale decisions (per minute, by driver)", "short",
           q(f"sum by (pool, direction, driver) (increase(gpufleet_scale_decisions_total{{{POOL}}}[1m]))",
             "{{pool}} {{direction}} ({{driver}})"),
           description="driver: the signal that set the count, panic, held_requests (scale from zero), or none."),
        ts("TTFT p50 / p95 vs SLO", "s",
           q(f"histogram_quantile(0.5, sum by (le, pool) (rate(gpufleet:replica_ttft_seconds_bucket{{{POOL}}}"
             f"[1m])))", "{{pool}} p50"),
           q(f"histogram_quantile(0.95, sum by (le, pool) (rate(gpufleet:replica_ttft_seconds_bucket{{{POOL}}}"
             f"[1m])))", "{{pool}} p95"),
           q(f"max by (pool) (gpufleet_pool_slo_ttft_seconds{{{POOL}}})", "{{pool}} SLO")),
        ts("End-to-end p50 / p95", "s",
           q(f"histogram_quantile(0.5, sum by (le, pool) (rate(gpufleet:replica_e2e_seconds_bucket{{{POOL}}}"
             f"[1m])))", "{{pool}} p50"),
           q(f"histogram_quantile(0.95, sum by (le, pool) (rate(gpufleet:replica_e2e_seconds_bucket{{{POOL}}}"
             f"[1m])))", "{{pool}} p95"),
           q(f"histogram_quantile(0.95, sum by (le, pool) (rate(gpufleet_edge_request_duration_seconds_bucket"
             f"{{{POOL}}}[1m])))", "{{pool}} p95 at the gateway")),
        ts("Queue: running, waiting, held", "short",
           q(f"sum by (pool) (gpufleet:replica_requests_running{{{POOL}}})", "{{pool}} running"),
           q(f"sum by (pool) (gpufleet:replica_requests_waiting{{{POOL}}})", "{{pool}} waiting"),
           q(f"sum by (pool) (gpufleet_held_requests{{{POOL}}})", "{{pool}} held")),
        ts("KV cache usage by replica", "percentunit",
           q(f"gpufleet:replica_kv_cache_usage{{{POOL}}}", "{{replica}} ({{role}})")),
        ts("Replicas by role", "short", q(f"sum by (pool, role) (gpufleet_replicas{{{POOL}}})", "{{pool}} {{role}}")),
        ts("Requests at the gateway by status", "reqps",
           q(f"sum by (pool, status) (rate(gpufleet_edge_requests_total{{{POOL}}}[{RATE}]))", "{{pool}} {{status}}")),
        ts("Panic, overflow, unmet replicas", "short",
           q(f"gpufleet_panic{{{POOL}}}", "{{pool}} panic"),
           q(f"gpufleet_pool_saturated{{{POOL}}}", "{{pool}} overflowing"),
           q(f"gpufleet_pool_unmet_replicas{{{POOL}}}", "{{pool}} unmet")),
    ], pool_var=True)


def gpus() -> dict[str, Any]:
    held = 'gpufleet_gpu_holder{role!~"free|cordoned"}'
    return _dashboard("gpufleet-gpus", "gpufleet — GPUs", "Each GPU (DCGM exporter's names, read from NVML) and "
                      "who holds it; the link matrix the allocator places by.", [
        ts("Utilisation", "percent", q("DCGM_FI_DEV_GPU_UTIL", "GPU{{gpu}}"), span=8),
        ts("Memory used", "percentunit",
           q("DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)", "GPU{{gpu}}"), span=8),
        ts("Temperature", "celsius", q("DCGM_FI_DEV_GPU_TEMP", "GPU{{gpu}}"), span=8, min_val=None),
        ts("Power", "watt", q("DCGM_FI_DEV_POWER_USAGE", "GPU{{gpu}}"), span=8),
        ts("Utilisation by pool (GPUs joined to replicas on UUID)", "percent",
           q(f"avg by (pool) (DCGM_FI_DEV_GPU_UTIL * on (UUID) group_left (pool) {held})", "{{pool}}"), span=8),
        ts("GPU memory by pool", "decmbytes",
           q(f"sum by (pool) (DCGM_FI_DEV_FB_USED * on (UUID) group_left (pool) {held})", "{{pool}}"), span=8),
        tbl("Who holds each GPU", q("gpufleet_gpu_holder", instant=True),
            description="role free: no replica; cordoned: NVML reported it failing."),
        tbl("Links between GPUs", q("gpufleet_gpu_link", instant=True),
            description="As `nvidia-smi topo -m`: NV# (NVLink, # links), PIX/PXB (PCIe switch), PHB/NODE "
                        "(same socket), SYS (across sockets).",
            transformation=DataTransformerConfig(id_val="groupingToMatrix", options={
                "rowField": "gpu", "columnField": "peer", "valueField": "link", "emptyValue": "null"})),
    ], pool_var=False)


def cost() -> dict[str, Any]:
    return _dashboard("gpufleet-cost", "gpufleet — cost", "Where the GPU-hours go: by pool and role, the warm "
                      "pool's share, the GPUs no replica held.", [
        ts("GPUs held by pool and role", "short",
           q(f"sum by (pool, role) (rate(gpufleet_gpu_seconds_total[{RATE}]))", "{{pool}} {{role}}"),
           description="GPU-seconds per second: the number of GPUs held."),
        ts("Idle GPUs (no replica)", "short", q(f"rate(gpufleet_gpu_idle_seconds_total[{RATE}])", "idle")),
        ts("Warm-pool share of held GPU time", "percentunit",
           q('sum(rate(gpufleet_gpu_seconds_total{role="warm"}[5m])) / sum(rate(gpufleet_gpu_seconds_total[5m]))',
             "warm share (5 m)")),
        ts("GPU-seconds per 1000 requests served", "s",
           q("1000 * sum(rate(gpufleet_gpu_seconds_total[5m]))"
             " / sum(rate(gpufleet:replica_requests_finished_total[5m]))",
             "GPU-s / 1k requests (5 m)")),
        ts("Power by pool", "watt",
           q('sum by (pool) (label_replace(DCGM_FI_DEV_POWER_USAGE * on (UUID) group_left (pool) gpufleet_gpu_holder, '
             '"pool", "(no replica)", "pool", ""))', "{{pool}}"),
           description="(no replica): the GPUs no replica holds."),
        tbl("GPU-hours over the time range", q("sum by (pool, role) (increase(gpufleet_gpu_seconds_total[$__range])) "
                                               "/ 3600", instant=True)),
    ], pool_var=False)


DASHBOARDS = {"fleet": fleet, "pool": pool, "gpus": gpus, "cost": cost}


def build_all() -> dict[str, str]:
    """file name → the JSON text written to grafana/dashboards/."""
    return {f"{name}.json": json.dumps(make(), indent=2, sort_keys=True) + "\n" for name, make in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    out = Path(argv[0]) if argv else OUT
    out.mkdir(parents=True, exist_ok=True)
    for name, text in build_all().items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

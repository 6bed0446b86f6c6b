"""The dashboards without Grafana: each panel's PromQL through Prometheus' HTTP API, drawn with matplotlib.

The offline stack has no Grafana (no Debian package), so `gpufleet dashboards --png DIR` draws one PNG per
dashboard from the same JSON Grafana provisions: the panels where gridPos puts them, the scale-event
annotations on every time-series panel, tables (with the one transformation the dashboards use,
groupingToMatrix). Grafana's variables get what Grafana would give them: `$pool` all pools (or --pool),
`$__rate_interval` four scrape intervals at least, `$__range` the rendered range.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from autoscaler.paths import shared

DASHBOARDS_DIR = shared("grafana/dashboards")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class PrometheusError(RuntimeError):
    """Prometheus refused a query, or could not be reached: the message says which and why."""


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    step: float
    scrape_s: float = 5.0

    @property
    def rate_interval(self) -> str:
        # Grafana: max(4 x scrape interval, step + scrape interval)
        return f"{int(max(4 * self.scrape_s, self.step + self.scrape_s))}s"

    @property
    def range(self) -> str:
        return f"{max(int(self.end - self.start), 1)}s"


def load_dashboards(directory: Path | None = None) -> list[dict[str, Any]]:
    directory = directory or DASHBOARDS_DIR
    files = sorted(directory.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no dashboards (*.json) in {directory}")
    return [json.loads(f.read_text()) for f in files]


def expand(expr: str, w: Window, pool: str = ".*") -> str:
    """Grafana's variables, as Grafana would fill them for this window."""
    return (expr.replace("$__rate_interval", w.rate_interval).replace("$__range", w.range)
            .replace("$__interval", f"{int(max(w.step, w.scrape_s))}s").replace("$pool", pool))


def legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt)


@dataclass
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]]


@dataclass
class PanelData:
    title: str
    kind: str  # timeseries | table
    unit: str
    series: list[tuple[str, Series]] = field(default_factory=list)  # (legend, series)
    errors: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(s.points for _, s in self.series)


class Prometheus:
    def __init__(self, url: str, timeout: float = 20) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=timeout)

    def _get(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            r = self.http.get(f"{self.url}{path}", params=params)
        except httpx.HTTPError as e:
            raise PrometheusError(f"cannot reach Prometheus at {self.url} ({e}): is the stack up (docker compose "
                                  f"up -d, make up-local)? Another Prometheus: --prometheus URL") from None
        try:
            body = r.json()
        except ValueError:
            raise PrometheusError(f"{self.url}{path}: HTTP {r.status_code}, not Prometheus' JSON") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{params.get('query')}: {body.get('error', body)}")
        return list(body["data"]["result"])

    def range(self, expr: str, w: Window) -> list[Series]:
        res = self._get("/api/v1/query_range", {"query": expr, "start": w.start, "end": w.end, "step": w.step})
        return [Series(r["metric"], [(float(t), float(v)) for t, v in r["values"]]) for r in res]

    def instant(self, expr: str, at: float) -> list[Series]:
        res = self._get("/api/v1/query", {"query": expr, "time": at})
        return [Series(r["metric"], [(float(r["value"][0]), float(r["value"][1]))]) for r in res]

    def scrape_interval(self, default: float = 5.0) -> float:
        try:
            r = self.http.get(f"{self.url}/api/v1/status/config").json()
            m = re.search(r"scrape_interval:\s*(\d+)s", r["data"]["yaml"])
            return float(m.group(1)) if m else default
        except (httpx.HTTPError, ValueError, KeyError):
            return default


def panel_data(prom: Prometheus, panel: dict[str, Any], w: Window, pool: str = ".*") -> PanelData:
    """Every target of one panel, queried; a query Prometheus refuses is an error of this panel only."""
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
    out = PanelData(panel["title"], panel.get("type", "timeseries"), unit)
    for t in panel.get("targets", []):
        expr = expand(t["expr"], w, pool)
        try:
            got = prom.instant(expr, w.end) if t.get("instant") else prom.range(expr, w)
        except PrometheusError as e:
            out.errors.append(str(e))
            continue
        out.series += [(legend(t.get("legendFormat", ""), s.labels), s) for s in got]
    return out


@dataclass(frozen=True)
class Annotation:
    name: str
    start: float
    end: float
    text: str
    color: str
    kind: str = ""
    pool: str = ""


def dashboard_annotations(prom: Prometheus, dash: dict[str, Any], w: Window, pool: str = ".*") -> list[Annotation]:
    """Grafana's Prometheus annotations: each run of consecutive non-empty steps of a series is one event."""
    out: list[Annotation] = []
    for a in dash.get("annotations", {}).get("list", []):
        if not a.get("expr") or not a.get("enable", True):
            continue
        step = _seconds(a.get("step", "15s"))
        # one step past the end: an event in the last step still has an evaluation after it
        aw = Window(w.start, w.end + step, step, w.scrape_s)
        for s in prom.range(expand(a["expr"], aw, pool), aw):
            runs: list[list[float]] = []
            for t, _ in s.points:
                if not runs or t - runs[-1][-1] > step * 1.5:
                    runs.append([])
                runs[-1].append(t)
            text = legend(a.get("titleFormat", ""), s.labels)
            out += [Annotation(a["name"], min(r[0], w.end), min(r[-1], w.end), text, a.get("iconColor", "red"),
                               s.labels.get("kind", ""), s.labels.get("pool", "")) for r in runs]
    return out


def _seconds(s: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", s.strip())
    if not m:
        raise ValueError(f"not a duration: {s!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


_UNIT_SCALE = {"percentunit": (100.0, "%"), "percent": (1.0, "%"), "reqps": (1.0, "req/s"), "s": (1.0, "s"),
               "celsius": (1.0, "°C"), "watt": (1.0, "W"), "decmbytes": (1 / 1024, "GiB"), "short": (1.0, "")}


def _matrix(panel: dict[str, Any], rows: list[tuple[str, Series]]) -> tuple[list[str], list[list[str]]]:
    """Grafana's groupingToMatrix, for the table panels that ask for it; else one row per series."""
    tr = next((t for t in panel.get("transformations", []) if t.get("id") == "groupingToMatrix"), None)
    if tr is None:
        keys = sorted({k for _, s in rows for k in s.labels if k not in ("__name__", "instance", "job")})
        body = [[s.labels.get(k, "") for k in keys] + [f"{s.points[-1][1]:g}" if s.points else ""] for _, s in rows]
        return [*keys, "value"], body
    o = tr["options"]
    r_f, c_f, v_f = o["rowField"], o["columnField"], o["valueField"]
    cols = sorted({s.labels.get(c_f, "") for _, s in rows}, key=_natural)
    cells = {(s.labels.get(r_f, ""), s.labels.get(c_f, "")): s.labels.get(v_f, "") for _, s in rows}
    row_keys = sorted({r for r, _ in cells}, key=_natural)
    return [f"{r_f} \\ {c_f}", *cols], [[r, *(cells.get((r, c), "X" if r == c else "") for c in cols)]
                                          for r in row_keys]


def _labels(notes: list[Annotation]) -> dict[tuple[float, str], set[str]]:
    """Annotation texts by (start, colour): one label for the events that began at one step."""
    out: dict[tuple[float, str], set[str]] = {}
    for a in notes:
        out.setdefault((a.start, a.color), set()).add(a.kind or a.text)
    return out


def _natural(s: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s))


def render_png(prom: Prometheus, dash: dict[str, Any], w: Window, out: Path, pool: str = ".*") -> list[PanelData]:
    """One PNG of the whole dashboard; returns what each panel got (for the caller to report empty panels)."""
    import matplotlib

    matplotlib.use("Agg")
    from datetime import UTC, datetime

    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    def clock(x: float, _: object) -> str:
        return f"{datetime.fromtimestamp(x, UTC):%H:%M:%S}"

    panels = [p for p in dash["panels"] if p.get("type") in ("timeseries", "table")]
    data = [panel_data(prom, p, w, pool) for p in panels]
    notes = dashboard_annotations(prom, dash, w, pool)
    rows = max((p["gridPos"]["y"] + p["gridPos"]["h"]) for p in panels)
    unit_in = 0.5  # inches per grid row
    fig_h = rows * unit_in + 1.4
    fig = plt.figure(figsize=(20, fig_h), dpi=80)
    fig.suptitle(f"{dash['title']} — {datetime.fromtimestamp(w.start, UTC):%Y-%m-%d %H:%M:%S} to "
                 f"{datetime.fromtimestamp(w.end, UTC):%H:%M:%S} UTC", fontsize=14, x=0.01, ha="left")
    top_in = 0.8  # the title
    for p, d in zip(panels, data, strict=True):
        g = p["gridPos"]
        # gridPos: 24 columns, rows of unit_in inches; gutters for the panel title above and ticks below
        left, width = g["x"] / 24 + 0.03, g["w"] / 24 - 0.045
        height = (g["h"] * unit_in - 0.75) / fig_h
        bottom = 1 - (top_in + (g["y"] + g["h"]) * unit_in - 0.35) / fig_h
        ax = fig.add_axes((left, bottom, width, height))
        ax.set_title(d.title, fontsize=10, loc="left")
        if d.errors:
            ax.text(0.5, 0.5, "query failed:\n" + "\n".join(e[:120] for e in d.errors), ha="center", va="center",
                    fontsize=8, color="red", transform=ax.transAxes, wrap=True)
            ax.set_axis_off()
            continue
        if d.empty:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=12, color="grey", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        if d.kind == "table":
            header, body = _matrix(p, d.series)
            ax.set_axis_off()
            shown = body[:14]
            tab = ax.table(cellText=shown or [[""] * len(header)], colLabels=header, loc="upper left",
                           cellLoc="left")
            tab.auto_set_font_size(False)
            tab.set_fontsize(7)
            if len(body) > len(shown):
                ax.text(0, 0, f"… {len(body) - len(shown)} more rows", fontsize=7, transform=ax.transAxes)
            continue
        scale, unit = _UNIT_SCALE.get(d.unit, (1.0, d.unit))
        for name, s in d.series:
            pts = [(t, v) for t, v in s.points if math.isfinite(v)]
            if pts:
                ax.plot([t for t, _ in pts], [v * scale for _, v in pts],
                        label=name[:48], linewidth=1.2)
        # Grafana draws a Prometheus annotation where its series starts: the first step that saw the event
        for a in notes:
            ax.axvline(a.start, color=a.color, alpha=0.45, linewidth=0.8, linestyle="--")
        for (t, color), texts in _labels(notes).items():
            ax.text(t, 1.0, " " + ", ".join(sorted(texts)), rotation=90, fontsize=5.5,
                    color=color, va="top", ha="right", transform=ax.get_xaxis_transform(), alpha=0.8)
        # x in epoch seconds, labelled as UTC clock times
        ax.set_xlim(w.start, w.end)
        ax.xaxis.set_major_formatter(FuncFormatter(clock))
        ax.tick_params(labelsize=7)
        if unit:
            ax.set_ylabel(unit, fontsize=8)
        if len(d.series) <= 10:
            ax.legend(fontsize=6, loc="upper left", ncols=2, framealpha=0.6)
    if notes:
        seen = sorted({(a.name, a.color) for a in notes})
        fig.text(0.01, 0.005, "annotations: " + "; ".join(
            f"{name} ({color}): " + ", ".join(sorted({a.text for a in notes if a.name == name}))
            for name, color in seen), fontsize=8, va="bottom")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return data

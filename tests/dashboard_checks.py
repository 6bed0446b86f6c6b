"""What the live-stack tests ask of the dashboards: every panel's query returns data from the live Prometheus,
and every annotation query returns the scale events the fleet recorded in that window, no more, no fewer."""

from __future__ import annotations

import math
from typing import Any

from autoscaler.dashboards.build import ANNOTATION_STEP, ANNOTATION_WINDOW, ANNOTATIONS
from autoscaler.dashboards.render import Prometheus, Window, dashboard_annotations, load_dashboards, panel_data

LOOKBACK_S = int(ANNOTATION_WINDOW.rstrip("s")) + int(ANNOTATION_STEP.rstrip("s")) + 5


def empty_panels(prom_url: str, w: Window) -> list[str]:
    """'dashboard / panel: why' for each panel with a target that returned no finite value."""
    prom = Prometheus(prom_url)
    problems = []
    for d in load_dashboards():
        for p in d["panels"]:
            for t in p.get("targets", []):
                got = panel_data(prom, {**p, "targets": [t]}, w)
                finite = any(math.isfinite(v) for _, s in got.series for _, v in s.points)
                if got.errors or not finite:
                    problems.append(f"{d['title']} / {p['title']}: {t['expr']} → "
                                    f"{got.errors or 'no finite value'}")
    return problems


def annotation_mismatches(prom_url: str, w: Window, events: list[dict[str, Any]], settled_before: float) -> list[str]:
    """Each dashboard's annotation queries against the events: an event before `settled_before` (scraped for
    sure) must be there; anything returned must be an event of the window."""
    prom = Prometheus(prom_url)
    problems = []
    for d in load_dashboards():
        names = {a["name"] for a in d["annotations"]["list"]}
        if names != set(ANNOTATIONS):
            problems.append(f"{d['title']}: annotations {sorted(names)}, not {sorted(ANNOTATIONS)}")
        got = dashboard_annotations(prom, d, w)
        for name, (kinds, _) in ANNOTATIONS.items():
            returned = {(a.kind, a.pool) for a in got if a.name == name}
            # the first evaluation looks back one window and a step: events just before the range show too
            happened = {(e["kind"], e["pool"]) for e in events
                        if e["kind"] in kinds and w.start - LOOKBACK_S <= e["t"] <= w.end}
            settled = {(e["kind"], e["pool"]) for e in events
                       if e["kind"] in kinds and w.start + 2 * w.scrape_s <= e["t"] <= settled_before}
            if settled - returned:
                problems.append(f"{d['title']} / {name}: missing {sorted(settled - returned)}")
            if returned - happened:
                problems.append(f"{d['title']} / {name}: not events of this run {sorted(returned - happened)}")
    return problems


def evaluated_after(prom: str, t: float) -> bool:
    """Prometheus has evaluated the recording rules on scrapes taken after t (instead of sleeping for it)."""
    import httpx

    r = httpx.get(f"{prom}/api/v1/query", params={"query": "min(timestamp(gpufleet:replicas:by_role))"}, timeout=5)
    res = r.json()["data"]["result"]
    return bool(res) and float(res[0]["value"][1]) >= t

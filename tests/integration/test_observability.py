"""Prometheus config and rules, and the Grafana dashboard's queries, checked by the real tools."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from autoscaler.dashboards.render import Window
from tests.dashboard_checks import annotation_mismatches, empty_panels, evaluated_after
from tests.helpers import ROOT, require_host_binaries, sim_pool, wait_for


def test_promtool_accepts_rules_and_compose_config(tmp_path: Path):
    require_host_binaries()
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package"
    r = subprocess.run([promtool, "check", "rules", str(ROOT / "prometheus" / "rules.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # the compose config refers to container paths: check a copy with the rules beside it
    cfg = (ROOT / "prometheus" / "prometheus.yml").read_text().replace("/etc/prometheus/", f"{tmp_path}/")
    (tmp_path / "prometheus.yml").write_text(cfg)
    shutil.copy(ROOT / "prometheus" / "rules.yml", tmp_path / "rules.yml")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "admin-token").write_text("t\n")
    (tmp_path / "secrets" / "scrape-key").write_text("k\n")
    r = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_unit_tests_of_the_alerts_pass():
    """Each alert fires on the series that should fire it, with its summary, and not on a healthy neighbour."""
    require_host_binaries()
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package"
    r = subprocess.run([promtool, "test", "rules", str(ROOT / "prometheus" / "tests" / "rules_test.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_panel_and_annotation_has_the_runs_data_and_the_pngs_render(local_stack, tmp_path: Path):
    """A short scale-test on the local stack (virtual GPU slots, so the GPU panels have readings), then every
    panel query of every dashboard on the live Prometheus, every annotation query against the run's events,
    and `gpufleet dashboards --png` (what the offline stack's users get instead of Grafana)."""
    stack = local_stack({"pools": [sim_pool(
        gpus_per_replica=1, targets={"concurrency": 2}, warm_pool={"min": 1, "max": 1},
        behavior={"panic_threshold": 1.5,
                  "scale_down": {"stabilization_s": 4, "policies": [{"type": "replicas", "value": 4, "period_s": 2}]}},
    )]})
    start = time.time()
    # clients see a 404 (unknown model) and a 200 for /v1/models: the status panels have more than 2xx
    assert httpx.post(f"{stack.url}/v1/completions", json={"model": "nope", "prompt": "x"}, timeout=10).status_code \
        == 404
    r = subprocess.run([sys.executable, "-m", "autoscaler.cli", "scale-test", "smoke", "--url", stack.url,
                        "--admin", stack.admin, "--token", stack.admin_token, "--out", str(tmp_path / "st"),
                        "--no-plot"], capture_output=True, text=True, timeout=180)
    assert r.returncode in (0, 1), r.stdout + r.stderr  # 1: an SLO missed, which is not this test's business
    # idle: the pool drains back to its minimum (drain and stop events)
    wait_for(lambda: len(stack.replicas(role="active")) == 1 and bool(stack.events("stop")), 90,
             "the pool to scale back down")
    settled = time.time()
    prom = f"http://127.0.0.1:{stack.prom_port}"
    # two scrapes (2 s) and a rule evaluation after the last event we require
    wait_for(lambda: evaluated_after(prom, settled + 4), 30, "the rules evaluated on scrapes after the run")
    w = Window(start, time.time(), step=2, scrape_s=2)
    kinds = {e["kind"] for e in stack.events() if e["t"] >= start}
    assert {"start", "activate", "drain", "stop", "panic"} <= kinds, f"the run should scale both ways: {kinds}"

    problems = empty_panels(prom, w)
    assert not problems, "panels with no data after the run:\n" + "\n".join(problems)
    mismatches = annotation_mismatches(prom, w, stack.events(), settled_before=settled)
    assert not mismatches, "\n".join(mismatches)

    out = tmp_path / "png"
    r = subprocess.run([sys.executable, "-m", "autoscaler.cli", "dashboards", "--png", str(out), "--prometheus", prom,
                        "--since", str(int(time.time() - start) + 5)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cost.png", "fleet.png", "gpus.png", "pool.png"]
    assert all(p.stat().st_size > 20_000 for p in out.iterdir()), "a drawn dashboard, not an empty canvas"

    # the autoscaler's own /metrics after the run (every family present) is clean by Prometheus' naming rules:
    # no reserved suffix on a gauge, no `le` outside a histogram, a unit in each name. DCGM_FI_* keep DCGM
    # exporter's own names and labels (`modelName`, `UUID`) on purpose, so DCGM's dashboards read them as is
    text = stack.admin_get("/metrics").text
    assert "gpufleet_pool_running_requests" in text and "gpufleet_policy_concurrent_requests_target" in text
    lint = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"], input=text,
                          capture_output=True, text=True, timeout=30)
    found = [line for line in (lint.stdout + lint.stderr).splitlines() if line.strip()]
    # (DCGM's camelCase labels are reported: the linter ran on this text)
    assert found and all(line.startswith("DCGM_FI_") for line in found), "\n".join(found)

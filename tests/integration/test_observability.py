"""Prometheus config and rules, and the Grafana dashboard's queries, checked by the real tools."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx

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


def test_dashboard_queries_run_on_the_live_prometheus(local_stack):
    """Grafana is not in the offline stack, so its dashboard is checked against Prometheus directly."""
    stack = local_stack({"pools": [sim_pool()]})
    prom = f"http://127.0.0.1:{stack.prom_port}"
    for _ in range(10):
        httpx.post(f"{stack.url}/v1/completions", json={"model": "tiny-chat", "prompt": "x", "max_tokens": 2},
                   timeout=10)
    dash = json.loads((ROOT / "grafana" / "dashboards" / "fleet.json").read_text())
    ds = json.loads(json.dumps(dash["panels"]))
    assert all(p["datasource"]["uid"] == "gpufleet-prometheus" for p in ds), "fixed datasource uid"
    exprs = {t["expr"]: p["title"] for p in dash["panels"] for t in p["targets"]}

    def all_have_data() -> bool:
        for expr, title in exprs.items():
            res = httpx.get(f"{prom}/api/v1/query", params={"query": expr}).json()
            assert res["status"] == "success", f"{title}: {expr}: {res}"
            if title.startswith(("Requests served", "Replicas by role", "Queue depth", "Desired")) \
                    and not res["data"]["result"]:
                return False
        return True

    wait_for(all_have_data, 60, "the dashboard's panels to show data", interval=2)

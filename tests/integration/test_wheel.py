"""The wheel outside a checkout: built from this tree, installed into a new virtual environment in a temporary
folder, and run from there — the shipped scenarios (and the traces they replay), the dashboards, the schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    r = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"), str(ROOT)], tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp / "dist").glob("gpufleet-*.whl")
    venv = tmp / "venv"
    r = _run([sys.executable, "-m", "venv", str(venv)], tmp)
    assert r.returncode == 0, r.stderr
    # the dependencies from the wheelhouse `make offline-images` builds (offline, as CI has it), else the index
    house = ROOT / "build" / "wheelhouse"
    src = ["--no-index", "--find-links", str(house)] if house.is_dir() else []
    r = _run([str(venv / "bin" / "pip"), "install", "-q", *src, str(wheel)], tmp, timeout=600)
    if r.returncode != 0 and not src:
        pytest.skip(f"no wheelhouse (make offline-images) and the index is not reachable: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stdout + r.stderr
    return venv


def test_the_installed_wheel_runs_the_shipped_scenarios_and_finds_its_data_outside_the_checkout(installed, tmp_path):
    gf = str(installed / "bin" / "gpufleet")
    # the code is the wheel's, not this checkout's
    r = _run([str(installed / "bin" / "python"), "-c", "import autoscaler, autoscaler.paths as p; "
              "print(autoscaler.__file__); print(p.shared('grafana/dashboards'))"], tmp_path)
    where, dashboards = r.stdout.split()
    assert where.startswith(str(installed)) and dashboards.startswith(str(installed / "share" / "gpufleet")), r
    assert sorted(p.name for p in Path(dashboards).iterdir()) == ["cost.json", "fleet.json", "gpus.json", "pool.json"]

    assert _run([gf, "--version"], tmp_path).stdout.startswith("gpufleet ")
    # a shipped scenario, simulated; without the report extra, no PNG, said once, the rest of the report written
    r = _run([gf, "simulate", "smoke", "--out", "smoke", "--json", "smoke.json"], tmp_path)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    assert "no PNG: matplotlib is not installed" in r.stderr
    assert json.loads((tmp_path / "smoke.json").read_text())["requests"] > 0
    assert (tmp_path / "smoke" / "report.json").exists()
    # a shipped scenario that replays a shipped trace: the trace comes from the wheel's share
    r = _run([gf, "simulate", "azure-conv", "--duration", "60", "--no-plot", "--out", "azure"], tmp_path)
    assert r.returncode in (0, 1) and "simulated" in r.stdout, r.stdout + r.stderr
    assert _run([gf, "dashboards", "--help"], tmp_path).returncode == 0
    schema = json.loads(_run([gf, "schema"], tmp_path).stdout)
    assert "pools" in schema["properties"]

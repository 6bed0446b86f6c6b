"""`gpufleet scale-test` end to end against a running local stack (the CI smoke run)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT, sim_pool


def _scale_test(stack, *args: str, out) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoscaler.cli", "scale-test", *args, "--url", stack.url,
                           "--admin", stack.admin, "--out", str(out),
                           "--token", stack.admin_token],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)


def test_smoke_scenario_reports_and_exit_status_follows_slo(local_stack, tmp_path):
    stack = local_stack({"pools": [sim_pool(model="tiny-chat")]})
    r = _scale_test(stack, "smoke", out=tmp_path / "ok")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SLO success_rate" in r.stdout and "offered" in r.stdout
    rep = json.loads((tmp_path / "ok" / "report.json").read_text())
    s = rep["summary"]
    assert s["requests"] == s["scheduled"] > 50 and s["failed"] == 0 and s["slo_met"]
    assert s["replica_seconds"]["active"] > 15, "at least one active replica for the whole run"
    streamed = [r for r in rep["requests"] if r["stream"]]
    assert rep["timeline"] and streamed and all(r["ttft"] is not None for r in streamed)
    assert all(r["ttft"] is None for r in rep["requests"] if not r["stream"]), "no TTFT without a stream"
    assert (tmp_path / "ok" / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # an SLO that cannot be met: non-zero exit, MISSED in the summary
    strict = tmp_path / "strict.yaml"
    strict.write_text("name: strict\nduration_s: 5\nprofile: {type: step, base_rps: 2, peak_rps: 2, at_s: 0}\n"
                      "slo: {success_rate: 1.0, ttft_p95_s: 0.0001}\n")
    r = _scale_test(stack, str(strict), out=tmp_path / "strict")
    assert r.returncode == 1 and "MISSED" in r.stdout


def test_no_stack_running_says_so_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "autoscaler.cli", "scale-test", "smoke", "--url",
                        "http://127.0.0.1:9", "--admin", "http://127.0.0.1:9"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "gpufleet up --local" in r.stderr


def test_without_matplotlib_it_says_so_before_running_not_after(tmp_path):
    """Was: a 5-minute run ending in a traceback, its PNG lost."""
    code = ("import sys; sys.modules['matplotlib'] = None; from autoscaler.cli import main; "
            "sys.exit(main(['scale-test', 'smoke', '--url', 'http://127.0.0.1:9', '--admin', 'http://127.0.0.1:9']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "matplotlib" in r.stderr and "--no-plot" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_scenario_of_several_models_reports_each_pool(local_stack, tmp_path):
    stack = local_stack({"pools": [sim_pool(model="tiny-chat"),
                                   sim_pool(name="other", model="tiny-other", warm_pool={"min": 0, "max": 0})]})
    sc = tmp_path / "mix.yaml"
    sc.write_text(
        "name: mix\nduration_s: 12\nstreams:\n"
        "  - {model: tiny-chat, profile: {type: step, base_rps: 2, peak_rps: 2, at_s: 0}}\n"
        "  - {model: tiny-other, profile: {type: step, base_rps: 0, peak_rps: 3, at_s: 4},\n"
        "     slo: {success_rate: 0.99, e2e_p95_s: 30}}\n"
        "output_tokens: {dist: fixed, mean: 8}\nslo: {success_rate: 0.99}\n")
    r = _scale_test(stack, str(sc), out=tmp_path / "mix")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pool chat" in r.stdout and "pool other" in r.stdout
    rep = json.loads((tmp_path / "mix" / "report.json").read_text())
    streams = rep["summary"]["streams"]
    assert set(streams) == {"chat", "other"}
    assert streams["chat"]["model"] == "tiny-chat" and streams["other"]["slo"]["e2e_p95_s"]["target"] == 30
    by_pool = {p: [q for q in rep["requests"] if q["pool"] == p] for p in streams}
    assert all(len(v) == streams[p]["requests"] > 5 and not [q for q in v if not q["ok"]] for p, v in by_pool.items())
    assert min(q["sent"] for q in by_pool["other"]) >= 3.9, "its own profile: nothing before 4 s"
    for p in streams:
        assert (tmp_path / "mix" / f"timeline-{p}.png").read_bytes()[:4] == b"\x89PNG"

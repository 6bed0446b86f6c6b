"""The simulator: its replica model against the sim engine's rules, the whole loop on the real
reconcile, the baselines' documented rules, the lower bound, the comparison at equal SLO, and the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from autoscaler.cli import main
from autoscaler.config import parse_config
from autoscaler.loop.policy import PoolView
from autoscaler.loop.signals import PoolSignals
from autoscaler.scaletest.loadgen import Arrival, constant_rate
from autoscaler.scaletest.scenario import Scenario
from autoscaler.sim.baselines import _Apa, aibrix_apa, hpa, keda, knative_kpa, static
from autoscaler.sim.compare import compare, lower_bound_gpu_seconds, public, slo_attainment
from autoscaler.sim.replica import SimReplica, SimRequest
from autoscaler.sim.run import pool_profile, simulate
from autoscaler.status import FleetStatus
from inference.engines.profiles import SimProfile

P = SimProfile(max_num_seqs=2, kv_capacity_tokens=1000, step_base_s=0.1, step_per_seq_s=0.01,
               prefill_per_token_s=0.001, load_time_s=5.0)


def drive(rep: SimReplica, reqs: list[SimRequest]) -> list[SimRequest]:
    """Enqueue at their times and run the replica's own wake-ups to the end."""
    done: list[SimRequest] = []
    pending = sorted(reqs, key=lambda r: r.at)
    while pending or rep.wake_at < math.inf:
        if pending and pending[0].at <= rep.wake_at:
            r = pending.pop(0)
            rep.enqueue(r, r.at, done)
        else:
            rep.wake(rep.wake_at, done)
    return done


def test_one_request_costs_prefill_then_one_step_per_token():
    r = SimRequest(0, 0.0, prompt=100, max_tokens=3, stream=True)
    drive(SimReplica("x", P), [r])
    step = 0.1 + 0.01
    assert r.first_token == pytest.approx(step + 100 * 0.001)
    assert r.done == pytest.approx(step + 100 * 0.001 + 2 * step)


def test_a_batch_shares_steps_and_a_full_batch_makes_the_next_request_wait():
    a, b, c = (SimRequest(i, 0.0, prompt=10, max_tokens=2, stream=True) for i in range(3))
    drive(SimReplica("x", P), [a, b, c])
    two = 0.1 + 2 * 0.01
    assert a.first_token == b.first_token == pytest.approx(two + 20 * 0.001)
    assert a.done == pytest.approx(two + 0.02 + two)
    assert c.first_token == pytest.approx(a.done + 0.11 + 0.01), "admitted when a slot frees, alone in the batch"


def test_kv_capacity_holds_a_request_back_as_the_engine_does():
    big = SimRequest(0, 0.0, prompt=600, max_tokens=2, stream=True)
    other = SimRequest(1, 0.0, prompt=600, max_tokens=2, stream=True)
    drive(SimReplica("x", P), [big, other])
    assert other.first_token is not None and big.done is not None
    assert other.first_token > big.done, "600 + 600 tokens do not fit a 1000-token KV cache"


def test_a_request_arriving_mid_batch_joins_at_the_next_step_boundary():
    long = SimRequest(0, 0.0, prompt=0, max_tokens=50, stream=True)
    late = SimRequest(1, 0.25, prompt=0, max_tokens=1, stream=True)
    drive(SimReplica("x", P), [long, late])
    # long alone: steps of 0.11 s end at 0.11, 0.22, 0.33; late joins at 0.33 and takes one step of two
    assert late.first_token == pytest.approx(0.33 + 0.12)


def fleet(**pool):
    p = {"name": "chat", "model": "m", "engine": "sim", "gpus_per_replica": 1, "min_replicas": 1, "max_replicas": 4,
         "sim": {"profile": "tiny", "load_time_s": 4.0, "max_num_seqs": 4, "step_base_s": 0.05,
                 "step_per_seq_s": 0.0},
         "warm_pool": {"min": 1, "max": 1}, "targets": {"concurrency": 4},
         "behavior": {"scale_down": {"stabilization_s": 10, "policies": []}}}
    p.update(pool)
    return parse_config({"pools": [p], "gpus": {"source": "none", "virtual_slots": 8}})


BURST = (constant_rate(2, 0, 20, max_tokens=20) + constant_rate(12, 20, 50, max_tokens=20)
         + constant_rate(1, 50, 90, max_tokens=20))


def test_the_real_reconcile_scales_a_burst_up_by_warm_activation_and_back_down_by_drain():
    sim = simulate(fleet(), BURST, duration_s=90)
    kinds = [e["kind"] for e in sim.events]
    first_activate = next(e for e in sim.events if e["kind"] == "activate")
    assert 20 <= first_activate["t"] <= 23, "scale-up within a couple of ticks of the burst"
    assert "start" in kinds and "ready" in kinds and "drain" in kinds
    assert all(r.ok for r in sim.results), "no request lost: activation first, drain before stop"
    held = [sum(len(p["replicas"]) for p in st["pools"].values()) for _, st in sim.timeline]
    assert max(held) >= 4 and held[-1] < max(held)
    FleetStatus.model_validate(sim.timeline[-1][1])  # the timeline is /status, typed


def test_the_simulated_status_is_the_live_builder_s_every_tick():
    """Every timeline entry is a FleetStatus from loop.record.build_status: the engine, the GPUs and who
    holds them, the gateway's reloads, the same fields the live /status has."""
    sim = simulate(fleet(), BURST, duration_s=90)
    statuses = [FleetStatus.model_validate(st) for _, st in sim.timeline]
    last = statuses[-1]
    pool = last.pools["chat"]
    assert pool.engine is not None and pool.engine.name == "sim"
    held = {d.id: d.held_by for d in last.gpus.devices if d.held_by}
    assert len(last.gpus.devices) == 8 and held
    assert set(held.values()) <= {r.id for r in pool.replicas} | {e["replica"] for e in sim.events if "replica" in e}
    assert last.gateway.reloads > 0 and last.gateway.last_reload_at is not None
    assert [s.ticks for s in statuses] == sorted(s.ticks for s in statuses)


def test_the_simulation_is_deterministic():
    a, b = simulate(fleet(), BURST, duration_s=90), simulate(fleet(), BURST, duration_s=90)
    assert [(r.at, r.e2e) for r in a.results] == [(r.at, r.e2e) for r in b.results]
    assert a.events == b.events


def test_without_a_warm_pool_the_burst_waits_for_a_cold_start():
    warm = simulate(fleet(), BURST, duration_s=90)
    cold = simulate(fleet(warm_pool={"min": 0, "max": 0}), BURST, duration_s=90)

    def p95(sim):
        xs = sorted(r.ttft for r in sim.results if r.ttft is not None)
        return xs[int(0.95 * len(xs))]

    assert p95(cold) > p95(warm) + 1.0


def test_no_routed_replica_and_no_activator_is_a_503_like_the_gateway():
    cfg = fleet(min_replicas=0, warm_pool={"min": 0, "max": 0})
    cfg = cfg.model_copy(update={"activator": cfg.activator.model_copy(update={"enabled": False})})
    sim = simulate(cfg, [Arrival(at=0.5, max_tokens=4)], duration_s=3)
    assert [(r.status, r.ok) for r in sim.results] == [(503, False)]


# ---- baselines: each one's documented rule ---------------------------------------------------

def sig(t: float, ready: int, conc: float, waiting: float = 0.0) -> PoolSignals:
    return PoolSignals(t, ready, conc - waiting, waiting, 0.0, None, None)


def pool_of(b, **kw):
    return b.fleet(fleet(**kw)).pools[0]


def test_hpa_decides_only_every_15_s_on_the_last_30_s_scrape_and_keeps_no_warm_replica():
    b = hpa()
    p = pool_of(b, max_replicas=8)
    st = b.initial_state(p, 1)
    hist = [sig(0, 1, 4)]
    d = b.policy(p, hist, PoolView(active=1), st, 0.0)
    assert d.desired_active == 1
    hist += [sig(t, 1, 16) for t in range(1, 31)]
    d = b.policy(p, hist[:2], PoolView(active=1), d.state, 1.0)
    assert d.desired_active == 1, "between syncs nothing changes"
    d = b.policy(p, hist[:16], PoolView(active=1), d.state, 15.0)
    assert d.desired_active == 1, "at 15 s Prometheus still holds the scrape of 0 s"
    d = b.policy(p, hist, PoolView(active=1), d.state, 30.0)
    assert (d.desired_active, d.desired_warm) == (4, 0)


def test_keda_scales_on_the_sum_of_waiting_requests_over_five():
    b = keda()
    p = pool_of(b, max_replicas=8)
    d = b.policy(p, [sig(0, 2, 30, waiting=21)], PoolView(active=2), b.initial_state(p, 2), 0.0)
    assert d.desired_active == 5  # ceil(21 / 5): the pool's total, not one pod's series


def test_knative_panics_on_the_6_s_window_and_does_not_scale_down_in_panic():
    b = knative_kpa()
    p = pool_of(b, max_replicas=8)  # container concurrency 4 → target 2.8
    hist = [sig(t, 1, 2.0) for t in range(60)]
    d = b.policy(p, hist, PoolView(active=1), b.initial_state(p, 1), 60.0)
    assert not d.panic and d.desired_active == 1
    hist += [sig(t, 1, 12.0) for t in range(60, 66)]
    d = b.policy(p, hist, PoolView(active=1), d.state, 66.0)
    assert d.panic and d.desired_active == 5  # ceil(12 / 2.8)
    hist += [sig(t, 5, 2.0) for t in range(66, 70)]
    d = b.policy(p, hist, PoolView(active=5), d.state, 70.0)
    assert d.panic and d.desired_active == 5, "in panic the count never goes down"


def test_aibrix_averages_180_s_of_10_s_resyncs_doubles_at_most_and_scales_down_to_the_lowest_of_300_s():
    b = aibrix_apa()
    p = pool_of(b, max_replicas=8)  # target concurrency 4 per replica
    d = b.policy(p, [sig(0, 1, 40)], PoolView(active=1), b.initial_state(p, 1), 0.0)
    assert d.desired_active == 2, "at most ×2 per step"
    d = b.policy(p, [sig(5, 2, 80)], PoolView(active=2), d.state, 5.0)
    assert d.desired_active == 2, "between resyncs nothing changes"
    # the 180 s stable window: (40 + 6 / 2) / 2 = 21.5 per replica still reads as a load of 5 × the target
    d = b.policy(p, [sig(10, 2, 6)], PoolView(active=2), d.state, 10.0)
    assert d.desired_active == 4
    assert len(d.state.values) == 2
    # 180 s on, the 40 has left the window: 6 over 4 replicas is 1.5 per replica → down, ÷2 at most per step
    d = b.policy(p, [sig(185, 4, 6)], PoolView(active=4), replace(d.state, desired=4), 185.0)
    assert [v for _, v in d.state.values] == [3.0, 1.5] and d.desired_active == 2
    d = b.policy(p, [sig(200, 4, 2)], PoolView(active=4), _Apa(desired=4), 200.0)
    assert d.desired_active == 2, ("0.5 per replica asks for 1: ÷2 at most per step", d.reason)
    # a scale-down takes the lowest recommendation of the last 300 s, not the latest: 3 now, 2 at 100 s ago
    st = _Apa(desired=4, last_eval=500.0, values=((590.0, 2.5),), recs=((500.0, 2),))
    d = b.policy(p, [sig(600, 4, 10)], PoolView(active=4), st, 600.0)
    assert d.desired_active == 2 and st.recs[0][1] == 2
    d = b.policy(p, [sig(600, 4, 10)], PoolView(active=4), replace(st, recs=((200.0, 2),)), 600.0)
    assert d.desired_active == 3, "a recommendation older than 300 s no longer counts"


def test_static_holds_its_count():
    sim = simulate(static(3).fleet(fleet()), BURST, policy=static(3).policy, initial_state=static(3).initial_state,
                   duration_s=90)
    held = {sum(len(p["replicas"]) for p in st["pools"].values()) for _, st in sim.timeline[5:]}
    assert held == {3}


# ---- the comparison --------------------------------------------------------------------------

def test_the_lower_bound_is_the_work_at_the_largest_batch_and_never_below_min_replicas():
    p = fleet(min_replicas=1, max_replicas=8).pools[0]
    # 4 slots, 50 ms steps, no per-sequence cost → 12.5 ms a token at best; prefill 0.02 ms a token (tiny)
    prefill = pool_profile(p).prefill_per_token_s
    arr = [Arrival(at=20.0 + t % 10, prompt_tokens=100, max_tokens=800) for t in range(60)]
    gpu_s, detail = lower_bound_gpu_seconds(arr, p, 40.0)
    assert detail["batch"] == 4
    assert gpu_s == pytest.approx(60 * (800 * 0.0125 + 100 * prefill))
    # a quiet trace: min_replicas for the whole run is the floor
    assert lower_bound_gpu_seconds(arr[:1], p, 100.0)[0] == pytest.approx(100.0)
    # × GPUs per replica
    p2 = fleet(min_replicas=1, max_replicas=8, gpus_per_replica=2).pools[0]
    assert lower_bound_gpu_seconds(arr, p2, 40.0)[0] == pytest.approx(2 * gpu_s)


SC = Scenario(name="t", duration_s=90, profile={"type": "step", "base_rps": 2, "peak_rps": 12, "at_s": 20},
              slo={"ttft_p95_s": 1.0, "e2e_p95_s": 5.0})


def test_compare_finds_each_systems_cheapest_setting_that_meets_the_slo_on_every_phase():
    res = compare(fleet(max_replicas=6), SC, BURST, phases=2, workers=1)
    names = [r["name"] for r in res["runs"]]
    assert names == ["gpufleet", "gpufleet-tuned", "oracle-static", "hpa", "keda", "knative", "aibrix"]
    assert res["phases_s"] == [0.0, 6.2]
    bound = res["lower_bound_gpu_seconds"]
    for r in res["runs"]:
        assert r["requests"] == len(BURST) and r["seeds"] == 2
        assert r["gpu_seconds_min"] <= r["gpu_seconds"] <= r["gpu_seconds_max"]
        assert r["gpu_seconds_min"] >= bound, (r["name"], r["gpu_seconds_min"], bound)
        if r["slo_met"]:
            # the chosen setting is the cheapest of those tried that met it, and it met it on each phase
            met = [t for t in r["tried"] if t["slo_met"]]
            assert round(r["gpu_seconds"], 1) == min(t["gpu_seconds"] for t in met)
            assert r["slo_attainment_min"] > 0
        else:
            assert "cannot meet the SLO" in r["title"] and not any(t["slo_met"] for t in r["tried"])
    static_ = res["runs"][2]
    # the static count found is the fewest that met it: one fewer (if tried) missed
    n = int(static_["setting"].split()[0])
    fewer = [t for t in static_["tried"] if t["setting"] == f"{n - 1} replicas"]
    assert static_["slo_met"] and all(not t["slo_met"] for t in fewer)
    # tuned gpufleet is searched over its targets; as configured is the one setting
    assert len(res["runs"][0]["tried"]) == 1 and len(res["runs"][1]["tried"]) >= 3
    tuned, configured = res["runs"][1], res["runs"][0]
    assert not configured["slo_met"] or tuned["gpu_seconds"] <= configured["gpu_seconds"] + 1e-6


def test_compare_in_worker_processes_gives_the_same_figures_as_in_process():
    one = compare(fleet(), SC, BURST, phases=2, workers=1, only=["hpa", "oracle-static"])
    two = compare(fleet(), SC, BURST, phases=2, workers=2, only=["hpa", "oracle-static"])
    strip = [{k: v for k, v in r.items() if k not in ("sim_wall_s",)} for r in public(one)["runs"]]
    assert strip == [{k: v for k, v in r.items() if k not in ("sim_wall_s",)} for r in public(two)["runs"]]


def test_slo_attainment_counts_failures_and_slow_requests_as_misses():
    from autoscaler.scaletest.loadgen import Result

    sc = Scenario(name="t", duration_s=1, profile={"type": "step", "base_rps": 1, "peak_rps": 1, "at_s": 0},
                  slo={"ttft_p95_s": 1.0, "e2e_p95_s": 5.0})
    rs = [Result(0, 0, 200, True, ttft=0.5, e2e=2), Result(0, 0, 200, True, ttft=1.5, e2e=2),
          Result(0, 0, 200, True, ttft=0.5, e2e=6), Result(0, 0, 503, False)]
    assert slo_attainment(rs, sc) == 0.25


def test_cli_simulate_compare_writes_the_table_json_and_plot(tmp_path: Path, capsys):
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(json.dumps({"gpus": {"source": "none"}, "pools": [{
        "name": "chat", "model": "m", "gpus_per_replica": 1, "min_replicas": 1, "max_replicas": 3,
        "sim": {"profile": "tiny"}, "targets": {"concurrency": 6}}]}))
    out = tmp_path / "rep"
    rc = main(["simulate", "smoke", "--config", str(cfg), "--compare", "--json", str(tmp_path / "c.json"),
               "--out", str(out), "--phases", "2", "--systems", "gpufleet,oracle-static,keda"])
    assert rc == 0
    doc = json.loads((tmp_path / "c.json").read_text())
    assert set(doc) >= {"runs", "lower_bound_gpu_seconds", "trace", "wall_s", "phases_s"}
    assert [r["name"] for r in doc["runs"]] == ["gpufleet", "oracle-static", "keda"]
    assert set(doc["runs"][0]) >= {"name", "setting", "slo_met", "slo_attainment", "gpu_seconds", "gpu_seconds_min",
                                   "gpu_seconds_max", "seeds", "tried", "vs_lower_bound"}
    assert (out / "compare.png").stat().st_size > 1000
    assert (out / "comparison.md").read_text().count("\n| ") == len(doc["runs"]) + 2  # separator, runs, bound
    cap = capsys.readouterr()
    assert "lower bound" in cap.out and "oracle-static" in cap.err  # the search's progress


def test_cli_simulate_writes_a_scale_test_shaped_report(tmp_path: Path):
    out = tmp_path / "rep"
    rc = main(["simulate", "smoke", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"summary", "timeline", "events", "requests"}
    assert report["summary"]["requests"] == len(report["requests"]) > 0
    assert rc == (0 if report["summary"]["slo_met"] else 1)
    assert (out / "timeline.png").exists() and (out / "summary.txt").exists()


def test_cli_simulate_takes_a_trace_file_as_is(tmp_path: Path):
    from tests.helpers import ROOT

    out = tmp_path / "rep"
    main(["simulate", str(ROOT / "tests/fixtures/traces/azure_conv_first200.csv"), "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["requests"] == 200
    assert report["scenario"]["slo"]["ttft_p95_s"] == 2.0


def _zero_fleet(**pool: object):
    p = {"name": "chat", "model": "m", "gpus_per_replica": 1, "min_replicas": 0, "max_replicas": 2,
         "warm_pool": {"min": 0, "max": 0}, "targets": {"concurrency": 4}, "scale_to_zero_after_s": 20,
         "sim": {"profile": "tiny", "load_time_s": 5.0},
         "behavior": {"scale_down": {"stabilization_s": 5, "policies": []}}}
    p.update(pool)
    return parse_config({"gpus": {"source": "none", "virtual_slots": 2}, "pools": [p]})


def test_simulated_activator_holds_the_first_requests_of_a_pool_at_zero_and_it_goes_back_to_zero():
    arr = [Arrival(at=10.0 + i * 0.1, prompt_tokens=16, max_tokens=8) for i in range(5)] + \
          [Arrival(at=100.0, prompt_tokens=16, max_tokens=8)]
    sim = simulate(_zero_fleet(), arr, duration_s=130)
    assert all(r.ok for r in sim.results), [r.error for r in sim.results if not r.ok]
    first = sim.results[0]
    assert 5.0 < first.ttft < 8.0, "held for the cold start (startup + 5 s load), then served"
    counts = [sum(len(p["replicas"]) for p in st["pools"].values()) for t, st in sim.timeline]
    times = [t for t, _ in sim.timeline]
    assert counts[times.index(9.0)] == 0, "nothing runs before the first request"
    assert 0 in counts[times.index(50.0):times.index(99.0)], "back to zero after the idle window"


def test_simulated_hold_timeout_is_a_503():
    sim = simulate(_zero_fleet(hold_timeout_s=2.0), [Arrival(at=1.0, prompt_tokens=16, max_tokens=8)],
                   duration_s=30)
    (r,) = sim.results
    assert not r.ok and "hold timeout" in (r.error or "")


def test_several_pools_share_the_simulated_host_by_priority_and_a_saturated_pool_overflows_capped():
    """by_pool: each pool its own arrivals; the same reconcile reclaims GPUs for the higher-priority pool,
    and the simulated gateway overflows a saturated pool to its fallback with the max_tokens cap."""
    quick = {"profile": "tiny", "load_time_s": 2.0, "max_num_seqs": 2}
    cfg = parse_config({"gpus": {"source": "none", "virtual_slots": 3}, "pools": [
        {"name": "low", "model": "l", "gpus_per_replica": 1, "priority": 0, "min_replicas": 1, "max_replicas": 2,
         "warm_pool": {"min": 0, "max": 0}, "targets": {"concurrency": 2}, "sim": quick},
        {"name": "high", "model": "h", "gpus_per_replica": 1, "priority": 10, "min_replicas": 1, "max_replicas": 3,
         "warm_pool": {"min": 0, "max": 0}, "targets": {"concurrency": 2}, "sim": quick,
         "saturation": {"waiting_per_replica": 2, "hold_s": 1}, "fallback": [{"pool": "low", "max_tokens": 4}]},
    ]})
    low = constant_rate(6.0, 0, 90, max_tokens=20)  # enough for two replicas: it holds the free GPU
    high = constant_rate(1.0, 0, 20, max_tokens=20) + constant_rate(10.0, 20, 40, max_tokens=20)
    sim = simulate(cfg, [], by_pool={"low": low, "high": high}, duration_s=90)
    assert {r.pool for r in sim.results} == {"low", "high"} and len(sim.results) == len(low) + len(high)
    reclaims = [e for e in sim.events if e["kind"] == "reclaim"]
    assert reclaims and all(e["pool"] == "high" and e["from_pool"] == "low" for e in reclaims)
    over = [r for r in sim.results if r.pool == "high" and r.served_by == "low"]
    assert over and all(r.tokens <= 4 for r in over if r.ok), "overflow, capped"
    assert max(sum(1 for x in st["pools"]["high"]["replicas"] if x["role"] == "active")
               for _, st in sim.timeline) == 2, "all 3 GPUs but the one low is guaranteed"
    assert min(sum(1 for x in st["pools"]["low"]["replicas"] if x["role"] == "active")
               for _, st in sim.timeline) >= 1, "never below its minimum"
    assert all(r.ok for r in sim.results if r.pool == "low"), "a drain cuts no request"


def test_simulate_a_scenario_of_several_models_reports_each_pool(tmp_path, capsys):
    """`gpufleet simulate multi-model --config examples/multi-model.yaml`: each stream to its model's pool,
    a summary and a timeline per pool; priorities and overflow at work on the way."""
    root = Path(__file__).resolve().parent.parent.parent
    out = tmp_path / "rep"
    rc = main(["simulate", "multi-model", "--config", str(root / "examples/multi-model.yaml"), "--out", str(out)])
    rep = json.loads((out / "report.json").read_text())
    streams = rep["summary"]["streams"]
    assert set(streams) == {"large", "small", "batch"} and rc == (0 if rep["summary"]["slo_met"] else 1)
    assert all(s["failed"] == 0 for s in streams.values())
    pools = {r["pool"] for r in rep["requests"]}
    assert pools == {"large", "small", "batch"}
    assert any(r["served_by"] == "small" for r in rep["requests"] if r["pool"] == "large"), "overflow"
    assert any(e["kind"] == "reclaim" for e in rep["events"])
    assert all((out / f"timeline-{p}.png").read_bytes()[:4] == b"\x89PNG" for p in streams)
    capsys.readouterr()
    assert main(["simulate", "multi-model", "--config", str(root / "examples/multi-model.yaml"), "--compare",
                 "--out", str(tmp_path / "c")]) == 2
    assert "--compare runs one pool's traffic" in capsys.readouterr().err


def test_a_crash_fails_what_the_replica_held_and_reconcile_replaces_it():
    steady = constant_rate(6, 0, 60, max_tokens=40)
    sim = simulate(fleet(), steady, duration_s=60, crashes=[(30.0, "chat")])
    crash = next(e for e in sim.events if e["kind"] == "crash")
    assert 30 <= crash["t"] <= 32 and crash["crashes"] == 1
    assert any(e["kind"] == "stop" and e["replica"] == crash["replica"] for e in sim.events)
    after = [e for e in sim.events if e["t"] >= crash["t"] and e["kind"] in ("activate", "start")]
    assert after, "the lost capacity comes back: the warm replica first, a start to refill"
    lost = [r for r in sim.results if not r.ok]
    assert lost and all("crashed" in (r.error or "") for r in lost), [r.error for r in lost][:3]
    assert all(r.ok for r in sim.results if r.at > crash["t"] + 1), "nothing routed to the dead replica"
    without = simulate(fleet(), steady, duration_s=60)
    assert all(r.ok for r in without.results) and not [e for e in without.events if e["kind"] == "crash"]


def test_a_sleeping_warm_replica_is_woken_before_it_is_activated():
    sim = simulate(fleet(warm_pool={"min": 1, "max": 1, "asleep": 1}), BURST, duration_s=90)
    slept = next(e for e in sim.events if e["kind"] == "sleep")
    woke = next(e for e in sim.events if e["kind"] == "wake" and e["replica"] == slept["replica"])
    act = next(e for e in sim.events if e["kind"] == "activate" and e["replica"] == slept["replica"])
    assert slept["t"] < 20 <= woke["t"] <= act["t"]
    asleep = [r.sleeping for t, st in sim.timeline if slept["t"] < t < woke["t"]
              for r in FleetStatus.model_validate(st).pools["chat"].replicas if r.id == slept["replica"]]
    assert asleep and all(asleep), "/status says it sleeps until it is woken"

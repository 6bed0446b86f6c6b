from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autoscaler.config import ConfigError
from autoscaler.scaletest.loadgen import Result
from autoscaler.scaletest.report import quantile, replica_seconds, summarize
from autoscaler.scaletest.scenario import SCENARIO_DIR, Scenario, arrivals, load_scenario
from autoscaler.scaletest.traces import TraceError, load_azure_csv, load_mooncake_jsonl

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "traces"


def test_azure_csv_parses_timestamps_with_100ns_resolution():
    rows = load_azure_csv(FIX / "azure_conv_first200.csv")
    assert len(rows) == 200
    assert rows[0].t == 0 and (rows[0].prompt_tokens, rows[0].output_tokens) == (374, 44)
    assert rows[1].t == pytest.approx(4.3145790, abs=1e-6)  # 18:15:50.9951690 - 18:15:46.6805900
    assert all(b.t >= a.t for a, b in zip(rows, rows[1:], strict=False))


def test_mooncake_jsonl_is_milliseconds():
    rows = load_mooncake_jsonl(FIX / "mooncake_first200.jsonl")
    assert len(rows) == 200 and rows[0].prompt_tokens == 40160 and rows[0].output_tokens == 6
    assert rows[-1].t < 60 and rows[-1].t > 10


def test_bad_trace_names_the_line(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,12,x\n")
    with pytest.raises(TraceError, match=r"t.csv:2"):
        load_azure_csv(bad)


def sc(**kw) -> Scenario:
    base = {"name": "t", "duration_s": 100, "profile": {"type": "step", "base_rps": 2, "peak_rps": 8, "at_s": 50}}
    base.update(kw)
    return Scenario.model_validate(base)


def test_step_profile_rates_follow_the_schedule_and_are_seeded():
    s = sc()
    a = arrivals(s)
    before = sum(1 for x in a if x.at < 50) / 50
    after = sum(1 for x in a if x.at >= 50) / 50
    assert 1.2 < before < 3 and 6 < after < 10
    assert arrivals(s) == a, "seeded: the same schedule every run"
    assert arrivals(sc(seed=1)) != a


@pytest.mark.parametrize("profile,t,rate", [
    ({"type": "ramp", "from_rps": 1, "to_rps": 11}, 50, 6),
    ({"type": "sine", "mean_rps": 6, "amplitude_rps": 5, "period_s": 100}, 0, 1),
    ({"type": "sine", "mean_rps": 6, "amplitude_rps": 5, "period_s": 100}, 50, 11),
    ({"type": "spike", "base_rps": 2, "spike_rps": 20, "at_s": 10, "spike_s": 5}, 12, 20),
    ({"type": "spike", "base_rps": 2, "spike_rps": 20, "at_s": 10, "spike_s": 5}, 16, 2),
])
def test_profile_rate_functions(profile, t, rate):
    assert sc(profile=profile).rate_at(t) == pytest.approx(rate)


def test_trace_replay_compression_rate_scale_and_caps():
    base = {"type": "trace", "path": str(FIX / "azure_conv_first200.csv")}
    plain = arrivals(sc(duration_s=7200, profile=base, max_output_tokens=64))
    assert len(plain) == 200 and max(a.max_tokens for a in plain) == 64
    fast = arrivals(sc(duration_s=7200, profile={**base, "time_compression": 10}))
    assert fast[-1].at == pytest.approx(plain[-1].at / 10, rel=1e-6)
    double = arrivals(sc(duration_s=7200, profile={**base, "rate_scale": 2}))
    assert len(double) == 400
    cut = arrivals(sc(duration_s=60, profile=base))
    assert all(a.at < 60 for a in cut) and 0 < len(cut) < 200


def test_every_shipped_scenario_loads_and_schedules():
    names = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
    assert {"default", "smoke", "spike", "ramp", "sine", "azure-conv"} <= set(names)
    for n in names:
        s, base = load_scenario(n)
        subs = [s.stream(i) for i in range(len(s.streams))] or [s]
        assert all(arrivals(x, base) for x in subs), n


def test_a_scenario_of_several_models_streams_inherit_and_override():
    from autoscaler.scaletest.scenario import Scenario

    sc = Scenario.model_validate({
        "name": "mix", "duration_s": 60, "prompt_tokens": {"mean": 100}, "slo": {"ttft_p95_s": 1},
        "streams": [{"model": "a", "profile": {"type": "step", "base_rps": 2, "peak_rps": 2, "at_s": 0}},
                    {"model": "b", "profile": {"type": "step", "base_rps": 2, "peak_rps": 2, "at_s": 0},
                     "prompt_tokens": {"mean": 7, "dist": "fixed"}, "slo": {"e2e_p95_s": 600}}]})
    a, b = sc.stream(0), sc.stream(1)
    assert (a.model, a.prompt_tokens.mean, a.slo.ttft_p95_s) == ("a", 100, 1)
    assert (b.model, b.prompt_tokens.mean, b.slo.ttft_p95_s, b.slo.e2e_p95_s) == ("b", 7, None, 600)
    ta, tb = [x.at for x in arrivals(a)], [x.at for x in arrivals(b)]
    assert ta and tb and ta != tb, "each stream its own seed: not the same arrivals twice"
    assert {x.prompt_tokens for x in arrivals(b)} == {7}
    with pytest.raises(ValueError, match="several streams"):
        arrivals(sc)


@pytest.mark.parametrize(("doc", "needle"), [
    ({"profile": {"type": "step", "base_rps": 1, "peak_rps": 1, "at_s": 0},
      "streams": [{"model": "a", "profile": {"type": "step", "base_rps": 1, "peak_rps": 1, "at_s": 0}}]},
     "not both or neither"),
    ({}, "not both or neither"),
    ({"model": "a", "streams": [{"model": "a", "profile": {"type": "step", "base_rps": 1, "peak_rps": 1,
                                                            "at_s": 0}}]}, "goes in each stream"),
    ({"streams": [{"model": "a", "profile": {"type": "step", "base_rps": 1, "peak_rps": 1, "at_s": 0}}] * 2},
     "a model appears twice"),
])
def test_bad_streams_say_what_is_wrong(tmp_path, doc, needle):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "duration_s": 10, **doc}))
    with pytest.raises(ConfigError, match=needle):
        load_scenario(str(p))


def test_bad_scenario_names_field(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: x\nduration_s: 10\nprofile: {type: step, base_rps: 1, peak_rps: 2}\n")
    with pytest.raises(ConfigError, match=r"profile.step.at_s"):
        load_scenario(str(p))
    with pytest.raises(ConfigError, match="shipped"):
        load_scenario("no-such-scenario")


def test_summary_slo_and_replica_seconds():
    s = sc(slo={"success_rate": 0.9, "ttft_p95_s": 0.5})
    ok = [Result(at=0, sent=100 + i, ok=True, ttft=0.1 * (i + 1), e2e=1.0, tokens=4) for i in range(10)]
    bad = [Result(at=0, sent=105, ok=False, status=503, error="x")]
    status = {"pools": {"p": {"replicas": [{"role": "active", "gpus": ["a"]}, {"role": "warm", "gpus": []}]}}}
    timeline = [(100.0, status), (110.0, status), (120.0, status)]
    out = summarize(s, ok + bad, timeline, 100.0, 120.0, "p")
    assert out["requests"] == 11 and out["failed"] == 1 and out["errors"] == {"HTTP 503": 1}
    assert out["replica_seconds"]["active"] == 20 and out["replica_seconds"]["warm"] == 20
    assert out["gpu_seconds"]["active"] == 20
    assert out["slo"]["success_rate"]["met"] and not out["slo"]["ttft_p95_s"]["met"]
    assert not out["slo_met"]
    assert quantile([1, 2, 3, 4], 0.5) == 2.5
    assert replica_seconds([], None)["replica_seconds"]["active"] == 0

from __future__ import annotations

import math

import pytest

from autoscaler.config import MetricsOverride
from autoscaler.engines import LLAMACPP_METRICS, SGLANG_METRICS, TGI_METRICS, VLLM_METRICS
from autoscaler.loop.signals import histogram_quantile, parse_metrics, pool_signals

VLLM = """
# HELP vllm:num_requests_running x
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 5.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} %d
vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="m"} %d
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} %d
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} %d
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 1.0
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} %d
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 1
"""


def vllm(b1: int, b2: int, total: int) -> str:
    return VLLM % (b1, b2, total, total, total)


def test_parse_vllm_names():
    s = parse_metrics(vllm(10, 20, 20), t=1.0)
    assert (s.running, s.waiting, s.kv_usage) == (3, 5, 0.25)
    assert s.ttft_buckets == ((0.1, 10), (1.0, 20), (math.inf, 20))
    assert s.requests_total == 21


def test_each_engine_is_read_under_its_own_names():
    # as each server writes them (metric names from their sources, cited in autoscaler/engines.py)
    sg = parse_metrics("# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs{model_name=\"m\"} 2\n"
                       "# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs{model_name=\"m\"} 7\n"
                       "# TYPE sglang:token_usage gauge\nsglang:token_usage{model_name=\"m\"} 0.5\n"
                       "# TYPE sglang:time_to_first_token_seconds histogram\n"
                       "sglang:time_to_first_token_seconds_bucket{le=\"0.5\"} 3\n"
                       "sglang:time_to_first_token_seconds_bucket{le=\"+Inf\"} 4\n"
                       "sglang:time_to_first_token_seconds_sum 1.5\nsglang:time_to_first_token_seconds_count 4\n"
                       "# TYPE sglang:num_requests_total counter\nsglang:num_requests_total{model_name=\"m\"} 11\n",
                       0, SGLANG_METRICS)
    assert (sg.running, sg.waiting, sg.kv_usage, sg.requests_total) == (2, 7, 0.5, 11)
    assert sg.ttft_buckets == ((0.5, 3.0), (math.inf, 4.0))
    # TGI's exporter writes a counter without `_total`
    tgi = parse_metrics("# TYPE tgi_queue_size gauge\ntgi_queue_size 4\n"
                        "# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size 9\n"
                        "# TYPE tgi_request_success counter\ntgi_request_success 5\n", 0, TGI_METRICS)
    assert (tgi.running, tgi.waiting, tgi.requests_total) == (9, 4, 5)
    ll = parse_metrics("# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 3\n"
                       "# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred 6\n"
                       "# TYPE llamacpp:prompt_tokens_total counter\nllamacpp:prompt_tokens_total 120\n",
                       0, LLAMACPP_METRICS)
    assert (ll.running, ll.waiting, ll.requests_total, ll.ttft_buckets) == (3, 6, 0, ())


def test_another_engines_names_are_not_read():
    vllm_text = "vllm:num_requests_running 5\nvllm:num_requests_waiting 2\n"
    assert (parse_metrics(vllm_text, 0, LLAMACPP_METRICS).running, parse_metrics(vllm_text, 0).running) == (0, 5)
    # a pool's own names (`metrics:` in fleet.yaml) replace the preset's
    own = MetricsOverride(running="my_running").apply(VLLM_METRICS)
    assert parse_metrics("my_running 4\n" + vllm_text, 0, own).running == 4


def test_what_each_engine_cannot_give():
    assert VLLM_METRICS.missing_signals() == () and SGLANG_METRICS.missing_signals() == ()
    assert TGI_METRICS.missing_signals() == ("kv_cache_usage", "ttft_p95_s")
    assert LLAMACPP_METRICS.missing_signals() == ("kv_cache_usage", "ttft_p95_s", "request_rate")


def test_histogram_quantile_matches_prometheus_interpolation():
    b = [(0.1, 10.0), (1.0, 20.0), (math.inf, 20.0)]
    assert histogram_quantile(0.5, b) == pytest.approx(0.1)
    assert histogram_quantile(0.95, b) == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None


def test_pool_signals_use_window_deltas_and_survive_restarts():
    a = [parse_metrics(vllm(100, 100, 100), 0.0), parse_metrics(vllm(100, 110, 110), 2.0)]
    b = [parse_metrics(vllm(50, 50, 50), 0.0), parse_metrics(vllm(5, 5, 5), 2.0)]  # b restarted
    s = pool_signals(2.0, [a, b], window_s=5)
    assert s.ready == 2 and s.running == 6 and s.waiting == 10
    # window: a finished 10 (all in 0.1–1.0), b restarted and counts 5 (all ≤ 0.1): p95 in upper bucket
    # success_total also counts one "stop" request: a 110+1-101 = 10, restarted b counts all its 5+1
    assert s.request_rate == pytest.approx((10 + 6) / 2.0)
    assert 0.1 < s.ttft_p95_s <= 1.0
    assert pool_signals(2.0, [], 5).ready == 0


@pytest.mark.parametrize("bad", [
    "vllm:num_requests_running NaN\n",
    "vllm:num_requests_running +Inf\n",
    "vllm:num_requests_waiting -Inf\n",
    "vllm:kv_cache_usage_perc NaN\n",
    "# TYPE vllm:time_to_first_token_seconds histogram\nvllm:time_to_first_token_seconds_bucket 3\n",
    '# TYPE vllm:time_to_first_token_seconds histogram\nvllm:time_to_first_token_seconds_bucket{le="x"} 3\n',
    "vllm:num_requests_running{ 3\n",
    "vllm:num_requests_running -2\n",
    "\x00\xff garbage {{{\n",
])
def test_metrics_that_cannot_be_used_are_a_value_error_not_a_crash(bad):
    with pytest.raises(ValueError):
        parse_metrics(bad, 0.0)


def test_non_finite_values_of_metrics_we_do_not_use_are_fine():
    s = parse_metrics("some_other_gauge NaN\nvllm:num_requests_running 2\n", 0.0)
    assert s.running == 2

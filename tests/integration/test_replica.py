"""A real replica process: readiness, OpenAI API, errors, metrics, batching."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.loop.signals import parse_metrics
from tests.helpers import free_port, replica_process, wait_for


@pytest.fixture
def replica() -> Iterator[str]:
    with replica_process("--load-time", "1.5", "--max-num-seqs", "2", "--step-base", "0.05",
                         "--step-per-seq", "0") as url:
        yield url


def test_vllms_readiness_contract_no_ready_and_health_only_once_loaded():
    """As vLLM: the port is bound only after the model loaded, so /health answering 200 means loaded; there
    is no /ready (no real engine serves one, and the autoscaler asks none)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "inference", "--port", str(port), "--model", "m1",
                             "--load-time", "2"])
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        with pytest.raises(httpx.ConnectError):  # loading: nothing listens yet
            httpx.get(f"{url}/health", timeout=1)
        wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, 20, "/health once loaded")
        assert time.monotonic() - t0 >= 1.5, "answered before the model had loaded"
        assert httpx.get(f"{url}/ready").status_code == 404
        r = httpx.post(f"{url}/v1/completions", json={"model": "m1", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_app_not_loaded_yet_answers_503_on_health_and_completions():
    from fastapi.testclient import TestClient

    from inference.app import create_app
    from inference.engines import PROFILES, SimEngine

    engine = SimEngine(PROFILES["tiny"].with_overrides(load_time_s=30))
    with TestClient(create_app(engine, "m1")) as c:
        assert c.get("/health").status_code == 503
        r = c.post("/v1/completions", json={"model": "m1", "prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"


def test_openai_client_chat_completions_streaming_and_not(replica):
    wait_for(lambda: httpx.get(f"{replica}/health").status_code == 200, 10, "ready")
    c = openai.OpenAI(base_url=f"{replica}/v1", api_key="x", max_retries=0)
    assert [m.id for m in c.models.list().data] == ["m1"]
    r = c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hello"}], max_tokens=5)
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == 5 and len(r.choices[0].message.content.split()) == 5
    again = c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hello"}],
                                      max_tokens=5)
    assert again.choices[0].message.content == r.choices[0].message.content, "sim text is deterministic"
    chunks = list(c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=4, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert chunks[-2].choices[0].finish_reason == "length"
    comp = c.completions.create(model="m1", prompt="once upon", max_tokens=3)
    assert comp.usage.completion_tokens == 3 and comp.choices[0].text


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"model": "m1", "messages": []}', 400, "messages"),
        (b'{"model": "m1", "messages": "hi"}', 400, "messages"),
        (b'{"model": "m1", "messages": [{"role": "robot", "content": "x"}]}', 400, "messages.0.role"),
        (b'{"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', 400,
         "max_tokens"),
        (b'{"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}', 400,
         "max_tokens"),
        (b'{"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": 900000}', 400,
         "max_tokens"),
        (b'{"model": "m1", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', 400,
         "temperature"),
        (b'{"model": "other", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
        # each of these was a plain-text 500
        (b'{"model": "m1", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, None),
        (b'{"model": "m1", "messages": [{"role": "user", "content": "x"}], "seed": ' + b"9" * 5000 + b"}",
         400, None),
        (b'{"model": "m1", "messages": [{"role": "user", "content": "x"}], "x": ' + b"[" * 100_000
         + b"]" * 100_000 + b"}", 400, None),
        (b'{"model": "m1", "messages": [{"role": "user", "content": "x"}], "x": ' + b"[" * 500
         + b"]" * 500 + b"}", 200, None),
        (b"\xff\xfe{}", 400, None),
    ],
)
def test_bad_input_gets_openai_error_never_500(replica, body, status, param):
    wait_for(lambda: httpx.get(f"{replica}/health").status_code == 200, 10, "ready")
    r = httpx.post(f"{replica}/v1/chat/completions", content=body,
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    if status == 200:
        return
    err = r.json()["error"]
    assert err["message"] and err["type"]
    assert err["param"] == param


def test_wrong_method_is_an_openai_405_with_allow(replica):
    r = httpx.get(f"{replica}/v1/chat/completions")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.json()["error"]["message"]


def test_a_client_that_hangs_up_frees_its_slot_and_is_no_load(replica):
    """Non-streamed: the generation stops when the client goes, instead of running to max_tokens."""
    wait_for(lambda: httpx.get(f"{replica}/health").status_code == 200, 10, "ready")
    body = {"model": "m1", "prompt": "x", "max_tokens": 400}  # 400 steps of 50 ms: 20 s if not aborted

    def load() -> float:
        s = parse_metrics(httpx.get(f"{replica}/metrics").text, 0)
        return s.running + s.waiting

    for _ in range(3):  # 2 slots: one of them waits
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{replica}/v1/completions", json=body, timeout=0.3)
    wait_for(lambda: load() == 0 or None, 3, "the abandoned requests to leave the engine")
    t = time.monotonic()
    r = httpx.post(f"{replica}/v1/completions", json={**body, "max_tokens": 4}, timeout=10)
    assert r.status_code == 200 and time.monotonic() - t < 2, "a slot was free at once"


def test_a_full_wait_queue_answers_429_with_retry_after():
    with replica_process("--load-time", "0", "--max-num-seqs", "1", "--step-base", "0.05", "--max-waiting", "2") as url:

        async def go() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as c:
                async def one(i: int) -> httpx.Response:
                    await asyncio.sleep(0.05 * i)  # in order: 1 runs, 2 wait, the rest find the queue full
                    return await c.post(f"{url}/v1/completions", json={"model": "m1", "prompt": "x",
                                                                        "max_tokens": 10})
                return await asyncio.gather(*(one(i) for i in range(6)))

        codes = [r.status_code for r in asyncio.run(go())]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429, 429], codes
        full = next(r for r in asyncio.run(go()) if r.status_code == 429)
        assert full.headers["retry-after"] and full.json()["error"]["code"] == "queue_full"


def test_continuous_batching_queues_beyond_slots_and_metrics_show_it(replica):
    wait_for(lambda: httpx.get(f"{replica}/health").status_code == 200, 10, "ready")

    async def go() -> list[float]:
        async with httpx.AsyncClient(timeout=30) as c:
            async def one() -> float:
                t = time.monotonic()
                r = await c.post(f"{replica}/v1/completions",
                                 json={"model": "m1", "prompt": "x", "max_tokens": 20})
                assert r.status_code == 200
                return time.monotonic() - t

            async def peek() -> tuple[float, float]:
                await asyncio.sleep(0.3)
                s = parse_metrics((await c.get(f"{replica}/metrics")).text, 0)
                return s.running, s.waiting

            *times, seen = await asyncio.gather(*(one() for _ in range(4)), peek())
            assert seen == (2, 2), f"2 slots: 2 running and 2 waiting expected, saw {seen}"
            return times

    times = sorted(asyncio.run(go()))
    # 20 steps of 50 ms: the first two finish in ~1 s, the two queued ones after ~2 s.
    assert times[1] < 1.6 and times[2] > 1.8, times
    text = httpx.get(f"{replica}/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_bucket", "vllm:request_success_total",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
        assert name in text, f"{name} missing from /metrics"
    assert parse_metrics(text, 0).requests_total == 4


def test_sleep_mode_endpoints_like_vllm():
    with replica_process("--load-time", "0.2", "--wake-time", "0.8") as url:
        body = {"model": "m1", "prompt": "x", "max_tokens": 2}
        assert httpx.get(f"{url}/is_sleeping").json() == {"is_sleeping": False}

        def memory() -> tuple[float, float]:
            fams = {s.name: s.value for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
                    for s in f.samples}
            return fams["gpufleet_sim_gpu_memory_bytes"], fams["gpufleet_sim_host_memory_bytes"]

        awake_gpu, awake_host = memory()
        assert awake_gpu > 0 and awake_host == 0
        assert httpx.post(f"{url}/sleep?level=1").status_code == 200
        gpu, host = memory()
        assert gpu == 0 and 0 < host < awake_gpu, "asleep: the GPU memory is free, the weights are in host RAM"
        assert httpx.get(f"{url}/is_sleeping").json() == {"is_sleeping": True}
        r = httpx.post(f"{url}/v1/completions", json=body)
        assert r.status_code == 503 and "sleeping" in r.json()["error"]["message"]
        t = time.monotonic()
        assert httpx.post(f"{url}/wake_up", timeout=10).status_code == 200
        assert 0.7 < time.monotonic() - t < 3, "waking takes the wake time"
        assert httpx.post(f"{url}/v1/completions", json=body).status_code == 200
        assert httpx.post(f"{url}/sleep?level=3").status_code == 400

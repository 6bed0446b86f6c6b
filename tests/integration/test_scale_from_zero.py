"""Scale to zero and back with the activator: real nginx, replicas and the openai client (max_retries=0)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import openai

from tests.helpers import ROOT, LocalStack, require_host_binaries, sim_pool, wait_for


def zero_pool(**over: Any) -> dict[str, Any]:
    return sim_pool(**{"min_replicas": 0, "warm_pool": {"min": 0, "max": 0}, "scale_to_zero_after_s": 4,
                        "behavior": {"scale_down": {"stabilization_s": 2,
                                                    "policies": [{"type": "replicas", "value": 4, "period_s": 2}]}},
                        **over})


def ask(url: str, i: int, stream: bool, timeout: float = 60) -> tuple[bool, str]:
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=timeout)
    try:
        if stream:
            chunks = list(c.chat.completions.create(model="tiny-chat", max_tokens=10, stream=True,
                                                    stream_options={"include_usage": True},
                                                    messages=[{"role": "user", "content": f"hi {i}"}]))
            ok = chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            return ok and bool(text), "" if ok else "truncated"
        r = c.chat.completions.create(model="tiny-chat", max_tokens=10,
                                      messages=[{"role": "user", "content": f"hi {i}"}])
        return r.usage is not None and r.usage.completion_tokens == 10, ""
    except Exception as e:  # noqa: BLE001 (every failure is reported)
        return False, f"{type(e).__name__}: {e}"


def test_the_first_request_as_soon_as_the_gateway_listens_is_served(tmp_path):
    require_host_binaries()
    stack = LocalStack(tmp_path, {"pools": [sim_pool(sim={"profile": "tiny", "load_time_s": 2.0,
                                                          "max_num_seqs": 4, "step_base_s": 0.05})]})
    with open(stack.log, "ab") as log:
        stack.proc = subprocess.Popen(
            [sys.executable, "-m", "autoscaler.cli", "up", "--local", "--config", str(stack.config_path),
             "--run-dir", str(stack.run_dir)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        def listening() -> bool:
            try:
                return httpx.get(f"{stack.url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(listening, 30, "the gateway listening", interval=0.02)
        t0 = time.monotonic()
        r = httpx.post(f"{stack.url}/v1/chat/completions", timeout=60, json={
            "model": "tiny-chat", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 10, r.text
        assert time.monotonic() - t0 > 1.0, "it was held while the first replica loaded (load time 2 s)"
        # the activator forwarded it, and says to whom, as nginx does for the requests it routes itself
        served = r.headers.get("x-gpufleet-replica")
        assert served and served in {x["id"] for x in stack.status()["pools"]["chat"]["replicas"]}, r.headers
    finally:
        assert stack.stop() == 0, stack.tail_log()


def test_idle_pool_goes_to_zero_then_a_burst_of_20_is_all_served(local_stack):
    stack = local_stack({"pools": [zero_pool()]}, active=0)
    # nothing asked yet: min_replicas 0 starts nothing, however many ticks the loop has made
    ticks = stack.status()["ticks"]
    wait_for(lambda: stack.status()["ticks"] >= ticks + 3, 20, "three more ticks")
    assert stack.replicas("chat") == []
    ok, err = ask(stack.url, 0, stream=True)
    assert ok, err
    assert stack.replicas("chat", role="active")
    wait_for(lambda: stack.replicas("chat") == [] or None, 40, "the idle pool back at zero replicas")
    assert any(e["kind"] == "decision" and e["desired_active"] == 0 for e in stack.events())

    results: list[tuple[bool, str]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        res = ask(stack.url, i, stream=i % 2 == 0)
        with lock:
            results.append(res)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    wait_for(lambda: stack.pool()["held"] > 0 or None, 10, "requests held by the activator")
    for t in threads:
        t.join(90)
    failed = [e for ok, e in results if not ok]
    assert len(results) == 20 and not failed, failed
    assert stack.pool()["held"] == 0, "nothing left held"


def test_a_hold_timeout_shorter_than_the_cold_start_is_an_openai_503_and_nothing_stays_held(local_stack):
    pool = zero_pool(hold_timeout_s=1.0, sim={"profile": "tiny", "load_time_s": 6.0, "max_num_seqs": 4,
                                              "step_base_s": 0.05})
    stack = local_stack({"pools": [pool]}, active=0)
    for stream in (False, True):
        t0 = time.monotonic()
        r = httpx.post(f"{stack.url}/v1/chat/completions", timeout=30,
                       json={"model": "tiny-chat", "stream": stream, "max_tokens": 5,
                             "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] and r.json()["error"]["code"] == "hold_timeout"
        assert 0.9 < time.monotonic() - t0 < 5
    c = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0)
    try:
        c.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "x"}], max_tokens=2)
        raise AssertionError("expected a 503")
    except openai.InternalServerError as e:
        assert e.status_code == 503 and e.body["code"] == "hold_timeout"
    assert stack.pool()["held"] == 0
    text = stack.admin_get("/metrics").text
    assert 'gpufleet_activator_timeouts_total{pool="chat"} 3.0' in text


def first_token_s(url: str) -> float:
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)
    t0 = time.monotonic()
    stream = c.chat.completions.create(model="tiny-chat", max_tokens=5, stream=True,
                                       messages=[{"role": "user", "content": "wake"}])
    for ch in stream:
        if ch.choices and ch.choices[0].delta.content:
            dt = time.monotonic() - t0
            break
    else:
        raise AssertionError("no token")
    list(stream)
    return dt


def test_from_zero_a_sleeping_warm_replica_answers_after_its_wake_time_not_a_cold_start(local_stack):
    """Cold start 6 s, wake 1 s. The warm replica loads, then sleeps (weights "offloaded"); the pool has
    no active replica. The first request wakes the sleeper instead of starting a replica."""
    pool = zero_pool(warm_pool={"min": 1, "max": 1, "asleep": 1}, scale_to_zero_after_s=600,
                     sim={"profile": "tiny", "load_time_s": 6.0, "wake_time_s": 1.0, "max_num_seqs": 4,
                          "step_base_s": 0.05})
    stack = local_stack({"pools": [pool]}, active=0)
    (sleeper,) = wait_for(lambda: [r for r in stack.replicas("chat", role="warm") if r["sleeping"]] or None, 30,
                          "the warm replica asleep")
    assert httpx.get(f"{sleeper['url']}/is_sleeping", headers=stack.replica_headers()).json() == \
        {"is_sleeping": True}
    assert not stack.replicas("chat", role="active")
    dt = first_token_s(stack.url)
    assert 0.9 < dt < 4.0, f"first token after {dt:.2f}s: the wake time (1 s), not a cold start (6 s)"
    (active,) = stack.replicas("chat", role="active")
    assert active["id"] == sleeper["id"] and not active["sleeping"]
    kinds = [e["kind"] for e in stack.events() if e.get("replica") == sleeper["id"]]
    assert "sleep" in kinds and "wake" in kinds and "activate" in kinds
    text = stack.admin_get("/metrics").text
    assert "gpufleet_replicas_sleeping" in text


def test_a_long_held_stream_gets_sse_keepalives_then_its_tokens(local_stack):
    pool = zero_pool(sim={"profile": "tiny", "load_time_s": 4.0, "max_num_seqs": 4, "step_base_s": 0.05})
    stack = local_stack({"pools": [pool], "activator": {"keepalive_after_s": 0.5}}, active=0)
    lines: list[str] = []
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", timeout=60,
                      json={"model": "tiny-chat", "stream": True, "max_tokens": 5,
                            "messages": [{"role": "user", "content": "x"}]}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[0].startswith(":"), "a comment first: the client sees the connection alive while held"
    data = [ln for ln in lines if ln.startswith("data:")]
    assert data[-1] == "data: [DONE]" and len(data) >= 6, lines
    # and the openai client reads such a stream as usual
    assert first_token_s(stack.url) < 5

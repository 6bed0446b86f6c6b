"""A pool of a real third-party engine: llama.cpp's server (not this project's code), on CPU, serving a tiny
random-weight model the test writes. Readiness is its own /health, scaling reads its own /metrics."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from autoscaler.scaletest.loadgen import Result, constant_rate, run_open_loop
from tests.helpers import require_llama_server, tiny_gguf, wait_for
from tests.integration.test_autoscaling import StatusRecorder

CAPACITY = 4.0  # req/s one replica serves at 100 tokens (2 slots, 1 thread: measured 4.6 on this host)


def llama_pool(binary: Path, model: Path, **over: object) -> dict:
    pool = {
        "name": "chat", "model": "tiny-llama", "engine": "llamacpp", "executable": str(binary),
        "model_path": str(model), "args": ["--parallel", "2", "--threads", "1"],
        "gpus_per_replica": 0, "min_replicas": 1, "max_replicas": 2,
        "warm_pool": {"min": 1, "max": 1}, "targets": {"concurrency": 2},
        "behavior": {"scale_down": {"stabilization_s": 8, "policies": [{"type": "replicas", "value": 2,
                                                                           "period_s": 5}]}},
        "drain_timeout_s": 30,
    }
    pool.update(over)
    return pool


def test_llama_cpp_pool_serves_scales_on_a_burst_and_drains_without_a_failure(local_stack, tmp_path):
    binary = require_llama_server()
    stack = local_stack({"pools": [llama_pool(binary, tiny_gguf(tmp_path / "tiny-llama.gguf"))]})
    wait_for(lambda: stack.replicas(role="warm", ready=True), 60, "a ready warm replica")

    # the process behind the pool is llama.cpp's, started with the preset's argv
    state = json.loads(next((stack.run_dir / "replicas").glob("r-chat-*.json")).read_text())
    cmdline = Path(f"/proc/{state['pid']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0] == str(binary).encode() and b"--metrics" in cmdline and b"tiny-llama" in cmdline
    # ...it became ready through its own /health, and the answer is its (llama.cpp's fingerprint), not ours
    ready = [e for e in stack.events("ready")]
    assert ready and all(e["load_s"] < 60 for e in ready)
    c = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)
    r = c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert r.model == "tiny-llama" and r.usage.completion_tokens == 5
    assert (r.system_fingerprint or "").startswith("b"), r  # llama-server's build number, e.g. "b1-0c1e570"
    # ...and llama.cpp itself demands the pool's key (LLAMA_API_KEY, never in argv): keyless, its own 401 on
    # completions and on /metrics; Prometheus' scrape key is the second key of its list
    (rep,) = stack.replicas(role="active", ready=True)
    assert b"--api-key" not in b" ".join(cmdline)
    chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(f"{rep['url']}/v1/chat/completions", json=chat, timeout=30).status_code == 401
    assert httpx.get(f"{rep['url']}/metrics", timeout=10).status_code == 401
    scrape = (stack.run_dir / "scrape-key").read_text().strip()
    assert httpx.get(f"{rep['url']}/metrics", headers={"Authorization": f"Bearer {scrape}"},
                     timeout=10).status_code == 200
    assert httpx.post(f"{rep['url']}/v1/chat/completions", json=chat, headers=stack.replica_headers(),
                      timeout=30).status_code == 200
    # what it does not export is said, not shown as a measured 0
    pool = stack.status()["pools"]["chat"]
    assert pool["engine"]["name"] == "llamacpp"
    assert pool["engine"]["missing_signals"] == ["kv_cache_usage", "request_rate", "ttft_p95_s"]
    assert pool["signals"]["kv_cache_usage"] is None and pool["signals"]["request_rate"] is None

    t0, results, rec = run_burst(stack, stack.url, None, CAPACITY)
    wait_for(lambda: len(stack.replicas(role="active")) == 1 and not stack.replicas(role="draining")
             and stack.replicas(role="warm", ready=True), 60, "back to one active and a ready warm replica")
    ups, acts = check_burst(results, rec, t0, "chat")
    print(f"\nFIGURES llama.cpp: {len(results)} requests, 0 failed; scale-up decided "
          f"{ups[0]['t'] - t0 - BASE:+.2f}s from the burst's start; warm activation {acts[0]['t'] - ups[0]['t']:.3f}s "
          f"after it; cold start to ready {[e['load_s'] for e in ready]} s")


BASE, BURST, AFTER = 5.0, 15.0, 20.0


def run_burst(stack: Any, url: str, api_key: str | None, capacity: float) -> tuple[float, list[Result], Any]:
    """Half the pool's capacity, then 3x it (streamed), then a quarter, 100 tokens each, with /status recorded
    from the start (the caller stops the recorder, in check_burst, once the pool has settled)."""
    arrivals = (constant_rate(capacity / 2, 0.0, BASE, max_tokens=100)
                + constant_rate(3 * capacity, BASE, BURST, max_tokens=100, stream=True)
                + constant_rate(capacity / 4, BASE + BURST, AFTER, max_tokens=100))
    rec = StatusRecorder(stack)
    rec.start()
    t0 = time.time()
    results: list[Result] = asyncio.run(run_open_loop(url, "tiny-llama", arrivals, api_key=api_key))
    assert len(results) == len(arrivals)
    return t0, results, rec


def timeline(rec: Any, t0: float, pool: str) -> str:
    """What the autoscaler saw and decided, for a failure's message: its decisions, then its signals each second."""
    lines = [f"decision {e['t'] - t0:+.2f}s desired={e['desired_active']} {e['reason']}"
             for e in rec.of("decision") if e["pool"] == pool]
    last = -1.0
    for t, st in rec.snapshots:
        p = st["pools"].get(pool) or {}
        if t - last >= 1.0:
            last = t
            lines.append(f"{t - t0:+.1f}s desired={p.get('desired_active')} signals={p.get('signals')} "
                         f"roles={[r['role'] for r in p.get('replicas', [])]}")
    return "\n".join(lines)


def check_burst(results: list[Result], rec: Any, t0: float, pool: str) -> tuple[list[dict], list[dict]]:
    """Every request served with no client retry; the burst scaled the pool 1 -> 2 by activating its warm
    replica, which served; the scale-down drained, never stopped a serving replica."""
    rec.halt.set()
    rec.join()
    rec.add(rec.stack.status())
    failed = [x for x in results if not x.ok]
    assert not failed, f"{len(failed)} of {len(results)} failed: {[x.error for x in failed[:5]]}"
    retried = [x for x in results if x.retries]
    assert not retried, f"{len(retried)} requests needed a client retry: a dropped request, not a served one"
    # from the load's start, not the burst's: where one replica serves less than this test's CAPACITY (a slower
    # or busier host), the base alone already passes the target, and the decision comes before the burst
    ups = [e for e in rec.of("decision") if e["pool"] == pool and e["t"] >= t0 and e["desired_active"] >= 2]
    assert ups, f"no scale-up decision under the load\n{timeline(rec, t0, pool)}"
    acts = [e for e in rec.of("activate") if e["pool"] == pool and e["t"] >= ups[0]["t"]]
    assert acts, "the warm replica was not activated"
    assert any(x.replica == acts[0]["replica"] for x in results), "the activated replica served nothing"
    assert [e for e in rec.of("drain") if e["pool"] == pool], "no drain after the burst"
    assert not {e["replica"] for e in rec.of("stop") if e["pool"] == pool and e["role"] == "active"}
    return ups, acts


def test_a_replica_never_ready_is_stopped_at_its_start_deadline_and_backs_off(local_stack):
    """A server that listens but never answers its readiness probe 200 (Python's own http.server: /health is a
    404) must not hold its GPU for ever: stopped at start_timeout_s with a start_timeout event, the slot
    freed, and the next start only after the crash backoff."""
    pool = {"name": "chat", "model": "m", "engine": "command",
            "command": [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"],
            "gpus_per_replica": 1, "min_replicas": 1, "max_replicas": 1, "warm_pool": {"min": 0, "max": 0},
            "start_timeout_s": 3, "start_backoff_s": 4, "targets": {"concurrency": 2}}
    stack = local_stack({"gpus": {"source": "none", "virtual_slots": 1}, "pools": [pool]}, active=0)
    first = wait_for(lambda: stack.events("start_timeout"), 30, "a start_timeout event")[0]
    assert first["start_timeout_s"] == 3 and first["crashes"] == 1
    assert "/health answered 404" in (first["last_error"] or ""), first
    starts = wait_for(lambda: (lambda s: s if len(s) >= 3 else None)(stack.events("start")), 40, "three starts")
    # the first failure is replaced at once, the second waits start_backoff_s (Kubernetes' CrashLoopBackOff)
    second = [e for e in stack.events("start_timeout")][1]
    assert second["backoff_s"] >= 3.5, second
    assert starts[2]["t"] - second["t"] >= 3.5, "restarted before its backoff"
    # the timed-out replica is gone, its slot held by no one but the replica started after it
    st = stack.status()
    holders = {g["held_by"] for g in st["gpus"]["devices"]}
    timed_out = {e["replica"] for e in stack.events("start_timeout")}
    assert not holders & timed_out, (holders, timed_out)

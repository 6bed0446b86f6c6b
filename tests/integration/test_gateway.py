"""The nginx gateway in a running local stack: routing, errors, Prometheus, faults."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import openai
import pytest

from autoscaler.gateway.render import packaged_template
from tests.helpers import sim_pool, wait_for


def test_openai_client_through_gateway_and_prometheus_sees_replicas(local_stack):
    stack = local_stack({"pools": [sim_pool(), sim_pool(name="code", model="tiny-code",
                                                        warm_pool={"min": 0, "max": 0})]})
    stack.wait_active(1, pool="code")
    c = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0)
    assert sorted(m.id for m in c.models.list().data) == ["tiny-chat", "tiny-code"]
    for model in ("tiny-chat", "tiny-code"):
        r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=6)
        assert r.model == model and r.usage.completion_tokens == 6
        chunks = list(c.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                                max_tokens=6, stream=True,
                                                stream_options={"include_usage": True}))
        assert chunks[-1].usage.completion_tokens == 6
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    for name in ("constructor", "__proto__", "toString", "hasOwnProperty"):  # not Object.prototype's
        r = httpx.post(f"{stack.url}/v1/chat/completions", json={"model": name, "messages": []})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", (name, r.text)
    for method in ("GET", "TRACE", "PUT"):  # TRACE is refused by nginx itself: JSON too, not its HTML page
        r = httpx.request(method, f"{stack.url}/v1/chat/completions")
        assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["message"], method
    r = httpx.post(f"{stack.url}/v1/chat/completions", content=b"{oops")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{stack.url}/v1/chat/completions", content=b"x" * (2 * 1024 * 1024))
    assert r.status_code == 413

    # Prometheus scrapes every replica through the file_sd targets, labelled with pool and role.
    prom = f"http://127.0.0.1:{stack.prom_port}"

    def scraped() -> list[dict] | None:
        res = httpx.get(f"{prom}/api/v1/query", params={"query": 'up{job="gpufleet-replicas"} == 1'}).json()
        got = res["data"]["result"]
        roles = {(m["metric"]["pool"], m["metric"]["role"]) for m in got}
        return got if {("chat", "active"), ("code", "active")} <= roles else None

    series = wait_for(scraped, 40, "Prometheus scraping both pools' active replicas", interval=1)
    assert all(m["metric"]["replica"].startswith("r-") for m in series)

    def autoscaler_up() -> bool:
        res = httpx.get(f"{prom}/api/v1/query", params={"query": 'up{job="gpufleet-autoscaler"}'}).json()
        return bool(res["data"]["result"]) and res["data"]["result"][0]["value"][1] == "1"

    wait_for(autoscaler_up, 30, "Prometheus scraping the autoscaler's /metrics", interval=1)


def test_sigkilled_replica_leaves_upstream_and_is_replaced(local_stack):
    stack = local_stack({"pools": [sim_pool(min_replicas=2, warm_pool={"min": 0, "max": 0})]}, active=2)
    victim = stack.replicas(role="active")[0]
    os.kill(stack.replica_pid(victim["id"]), signal.SIGKILL)
    killed = time.monotonic()

    def gone() -> bool:
        conf = (stack.run_dir / "nginx" / "upstreams.conf").read_text()
        ids = {r["id"] for r in stack.replicas()}
        return victim["upstream"] not in conf and victim["id"] not in ids

    wait_for(gone, 10, "the killed replica to leave the upstream")
    assert time.monotonic() - killed < 10
    replaced = stack.wait_active(2, timeout=30)
    assert victim["id"] not in {r["id"] for r in replaced}
    # and the gateway serves on the replacement set
    for _ in range(6):
        r = httpx.post(f"{stack.url}/v1/completions", json={"model": "tiny-chat", "prompt": "x",
                                                            "max_tokens": 2}, timeout=10)
        assert r.status_code == 200


def test_requests_in_flight_on_a_killed_replica_are_answered_by_another(local_stack):
    """A request that got no response byte is retried on another replica (proxy_next_upstream with
    non_idempotent): SIGKILL one of two replicas while each holds requests, and every client gets its 200,
    from the survivor; the edge metrics count the retries."""
    from concurrent.futures import ThreadPoolExecutor

    stack = local_stack({"pools": [sim_pool(min_replicas=2, warm_pool={"min": 0, "max": 0},
                                            sim={"profile": "tiny", "load_time_s": 1.0, "max_num_seqs": 8,
                                                 "step_base_s": 0.05, "step_per_seq_s": 0.0})]}, active=2)
    wait_for(lambda: stack.gateway_serves() and len(stack.replicas(role="active", ready=True)) == 2, 30,
             "both replicas routed")
    victim, survivor = stack.replicas(role="active")

    def ask(_: int) -> httpx.Response:  # ~2 s of decoding, not streamed: no byte reaches the client before
        return httpx.post(f"{stack.url}/v1/completions", json={"model": "tiny-chat", "prompt": "x",
                                                               "max_tokens": 40}, timeout=60)

    with ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(ask, i) for i in range(8)]
        time.sleep(0.8)  # all sent, each decoding on one of the two (least_conn: about four each)
        os.kill(stack.replica_pid(victim["id"]), signal.SIGKILL)
        answers = [f.result() for f in futures]
    assert [r.status_code for r in answers] == [200] * 8, [r.text[:200] for r in answers if r.status_code != 200]
    assert {r.headers["x-gpufleet-replica"] for r in answers} == {survivor["id"]}, "only the survivor answered"

    def retries() -> float:
        text = stack.admin_get("/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('gpufleet_edge_retries_total{pool="chat"}'))

    wait_for(lambda: retries() >= 1, 10, "the retries counted at the edge")


def test_broken_template_or_rejected_config_never_interrupts_serving(local_stack, tmp_path):
    tpl = tmp_path / "upstreams.conf.j2"
    tpl.write_text(packaged_template("upstreams.conf.j2"))
    stack = local_stack({"pools": [sim_pool(warm_pool={"min": 1, "max": 1})],
                         "gateway": {"upstream_template": str(tpl)}})
    wait_for(lambda: stack.replicas(role="warm", ready=True), 30, "a warm replica")
    good_conf = (stack.run_dir / "nginx" / "upstreams.conf").read_text()

    errors: list[str] = []
    answered = [0]
    halt = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=10) as c:
            while not halt.is_set():
                try:
                    r = c.post(f"{stack.url}/v1/completions",
                               json={"model": "tiny-chat", "prompt": "x", "max_tokens": 2})
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                    answered[0] += 1
                except httpx.HTTPError as e:
                    errors.append(repr(e))
                time.sleep(0.05)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        base = stack.status()["gateway"]["errors"]
        # 1. A template that does not render: Jinja raises on every render.
        tpl.write_text("{% for p in pools %}{{ p.nope(}}")
        wait_for(lambda: stack.status()["gateway"]["errors"] > base, 10, "render error counted")
        assert "render failed" in stack.status()["gateway"]["last_error"]
        # 2. A template that renders a config nginx -t rejects, with a change to apply.
        tpl.write_text("upstream {% for p in pools %}{{ p.name }}{% endfor %} { bogus_directive; }\n")
        n = stack.status()["gateway"]["errors"]
        wait_for(lambda: stack.status()["gateway"]["errors"] > n, 10, "nginx -t rejection counted")
        assert "nginx -t rejected" in stack.status()["gateway"]["last_error"]
        assert (stack.run_dir / "nginx" / "upstreams.conf").read_text() == good_conf, "last good kept"
        n = answered[0]  # still served after the rejection, on the last good config
        wait_for(lambda: answered[0] >= n + 10, 20, "ten more answers after the rejected config")
    finally:
        halt.set()
        t.join()
    assert not errors, f"serving was interrupted: {errors[:3]}"
    metrics = stack.admin_get("/metrics").text
    assert "gpufleet_gateway_errors_total" in metrics


def test_autoscaler_killed_hard_adopts_its_fleet_on_restart(local_stack):
    cfg = {"pools": [sim_pool(min_replicas=2, warm_pool={"min": 1, "max": 1})]}
    stack = local_stack(cfg, active=2)
    # a quiet fleet: at start a warm replica ready before the actives is activated, then one is drained
    wait_for(lambda: stack.replicas(role="warm", ready=True) and not any(
        r["role"] in ("draining", "starting") for r in stack.replicas()), 30, "a warm replica, nothing in flux")
    before = {r["id"]: r["role"] for r in stack.replicas()}
    stack.proc.send_signal(signal.SIGKILL)
    stack.proc.wait(5)
    # replicas survive the autoscaler (own sessions) ...
    for rid in before:
        os.kill(stack.replica_pid(rid), 0)
    stack.start(active=2)
    wait_for(lambda: stack.status()["ticks"] >= 3, 20, "the restarted autoscaler's first three ticks")
    after = {r["id"]: r["role"] for r in stack.replicas()}
    assert after == before, f"restart changed the fleet: {before} -> {after}"
    starts = [e for e in stack.events("start")]
    assert not starts, f"restart started new replicas instead of adopting: {starts}"
    r = httpx.post(f"{stack.url}/v1/completions", json={"model": "tiny-chat", "prompt": "x",
                                                        "max_tokens": 2}, timeout=10)
    assert r.status_code == 200

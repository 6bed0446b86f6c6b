"""Who may use the local stack: API keys and their limits at the real nginx, the admin token, Prometheus."""

from __future__ import annotations

import concurrent.futures
import os
import stat
import subprocess
import sys

import httpx
import openai
import pytest
import yaml

from autoscaler.gateway.access import hash_key
from tests.helpers import ROOT, prometheus_diagnosis, sim_pool, wait_for

ALICE, FLOOD, NARROW, SLOW = ("gf-alice-" + "a" * 24, "gf-flood-" + "f" * 24, "gf-narrow-" + "n" * 24,
                              "gf-slow-" + "s" * 24)
CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _keys_file(path) -> None:
    path.write_text(yaml.safe_dump({"keys": [
        {"name": "alice", "sha256": hash_key(ALICE), "tier": "premium"},
        {"name": "flood", "sha256": hash_key(FLOOD), "requests_per_s": 1, "burst": 2},
        {"name": "narrow", "key": NARROW, "models": ["tiny-other"]},  # plain in the file: hashed when read
        {"name": "slow", "sha256": hash_key(SLOW), "concurrent": 1},
    ]}))


def _post(stack, key: str | None, body: dict = CHAT, timeout: float = 30) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{stack.url}/v1/chat/completions", json=body, headers=headers, timeout=timeout)


@pytest.fixture
def keyed_stack(local_stack, tmp_path):
    keys = tmp_path / "keys.yaml"
    _keys_file(keys)
    stack = local_stack({"gateway": {"auth": {"enabled": True, "keys_file": str(keys)}},
                         "pools": [sim_pool(), sim_pool(name="other", model="tiny-other", min_replicas=0,
                                                        warm_pool={"min": 0, "max": 0})]},
                        start=False)
    stack.keys_file = keys
    # wait_active asks /v1/models, which wants a key now
    stack.start(active=0)
    wait_for(lambda: stack.replicas(role="active", ready=True) and _post(stack, ALICE).status_code == 200, 45,
             "the chat pool serving a keyed request")
    return stack


def test_no_key_or_a_wrong_key_is_a_401_and_the_openai_client_with_a_key_works(keyed_stack):
    stack = keyed_stack
    for key, code in ((None, "missing_api_key"), ("gf-wrong-" + "w" * 24, "invalid_api_key"),
                      (hash_key(ALICE), "invalid_api_key")):  # the stored hash is not a key
        r = _post(stack, key)
        assert r.status_code == 401, (key, r.status_code, r.text)
        assert r.json()["error"]["code"] == code and r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{stack.url}/v1/models", headers={"Authorization": f"Bearer {key}"} if key else {}
                         ).status_code == 401
    r = httpx.post(f"{stack.url}/v1/chat/completions", json=CHAT, headers={"Authorization": f"Basic {ALICE}"})
    assert r.status_code == 401

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.url}/v1", api_key="gf-nope", max_retries=0).models.list()
    c = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=ALICE, max_retries=0, timeout=30)
    assert sorted(m.id for m in c.models.list().data) == ["tiny-chat", "tiny-other"]
    r = c.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert r.usage.completion_tokens == 5
    chunks = list(c.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "x"}],
                                            max_tokens=5, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 5
    # which replica served: its id, never its address
    raw = _post(stack, ALICE)
    assert raw.headers["x-gpufleet-replica"].startswith("r-chat-")
    assert "x-gpufleet-upstream" not in raw.headers and "127.0.0.1" not in str(raw.headers)

    # key names in the access log, no secret anywhere in the logs
    access = (stack.run_dir / "nginx-access.log").read_text()
    assert "key=alice" in access
    logs = access + stack.log.read_text() + (stack.run_dir / "nginx-error.log").read_text()
    assert not any(k in logs for k in (ALICE, FLOOD, NARROW, SLOW))
    assert stack.status()["gateway"]["auth"] is True and stack.status()["gateway"]["api_keys"] == 4


def test_a_flooding_key_gets_429_while_another_key_is_served(keyed_stack):
    stack = keyed_stack
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        flood = list(ex.map(lambda _: _post(stack, FLOOD), range(12)))
        other = list(ex.map(lambda _: _post(stack, ALICE), range(4)))
    codes = [r.status_code for r in flood]
    assert codes.count(429) >= 8 and codes.count(200) >= 1, codes  # rate 1/s, burst 2
    limited = next(r for r in flood if r.status_code == 429)
    assert limited.headers["retry-after"] == "1"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert [r.status_code for r in other] == [200] * 4
    # the openai client sees a RateLimitError
    with pytest.raises(openai.RateLimitError):
        c = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=FLOOD, max_retries=0)
        for _ in range(6):
            c.chat.completions.create(**CHAT)


def test_concurrent_requests_past_a_keys_limit_are_429(keyed_stack):
    stack = keyed_stack
    long = {**CHAT, "max_tokens": 40, "stream": True}  # ~2 s each
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        first = ex.submit(_post, stack, SLOW, long)
        wait_for(lambda: any(r["load"] >= 1 for r in stack.replicas(role="active")), 10, "the first stream")
        second = _post(stack, SLOW, long)
        assert second.status_code == 429, second.text
        assert first.result().status_code == 200
    assert _post(stack, SLOW).status_code == 200  # the slot is free again


def test_a_key_cannot_reach_a_model_it_is_not_allowed(keyed_stack):
    stack = keyed_stack
    r = _post(stack, NARROW)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    # the same answer as for a model that does not exist: nothing learnt about other models
    assert _post(stack, NARROW, {**CHAT, "model": "nope"}).json()["error"]["message"].endswith(
        "does not exist or you do not have access to it.")
    models = httpx.get(f"{stack.url}/v1/models", headers={"Authorization": f"Bearer {NARROW}"}).json()
    assert [m["id"] for m in models["data"]] == ["tiny-other"]


def test_keys_file_changes_reload_the_gateway_and_a_bad_one_keeps_the_last_good(keyed_stack):
    stack = keyed_stack
    out = subprocess.run([sys.executable, "-m", "autoscaler.cli", "keys", "new", "carol", "--file",
                          str(stack.keys_file)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    carol = out.stdout.strip().splitlines()[-1]
    assert carol.startswith("gf-") and carol not in stack.keys_file.read_text()
    assert stat.S_IMODE(os.stat(stack.keys_file).st_mode) == 0o600
    wait_for(lambda: _post(stack, carol).status_code == 200, 10, "the new key to be accepted")
    assert _post(stack, ALICE).status_code == 200

    stack.keys_file.write_text("keys: [{name: Bad Name, key: short}]\n")
    wait_for(lambda: "keys file rejected" in (stack.status()["gateway"]["last_error"] or ""), 10,
             "the bad keys file to be reported")
    assert _post(stack, carol).status_code == 200 and _post(stack, ALICE).status_code == 200


def test_first_start_makes_a_key_and_an_admin_token_and_prometheus_scrapes_with_it(local_stack):
    stack = local_stack({"gateway": {"auth": {"enabled": True}}, "pools": [sim_pool()]}, start=False)
    stack.start(active=0)
    key_file = stack.run_dir / "api-keys.default-key"
    wait_for(lambda: key_file.exists(), 10, "the generated key")
    key = key_file.read_text().strip()
    for f in ("api-keys.yaml", "api-keys.default-key", "admin-token"):
        assert stat.S_IMODE(os.stat(stack.run_dir / f).st_mode) == 0o600, f
    assert key not in (stack.run_dir / "api-keys.yaml").read_text()
    log = stack.log.read_text()
    assert key not in log and str(key_file) in log  # where it is, never what it is
    wait_for(lambda: _post(stack, key).status_code == 200, 45, "the generated key served")
    assert _post(stack, None).status_code == 401

    # the admin API: 401 without the token (healthz stays open for health checks)
    for path in ("/status", "/metrics", "/gpus"):
        r = httpx.get(f"{stack.admin}{path}")
        assert r.status_code == 401, path
    assert httpx.get(f"{stack.admin}/healthz").status_code == 200
    assert stack.admin_get("/status").status_code == 200
    prom = f"http://127.0.0.1:{stack.prom_port}"

    def scraped() -> bool:
        res = httpx.get(f"{prom}/api/v1/query", params={"query": 'up{job="gpufleet-autoscaler"}'}).json()
        return bool(res["data"]["result"]) and res["data"]["result"][0]["value"][1] == "1"

    wait_for(scraped, 30, "Prometheus scraping the autoscaler with the token", interval=1)

    # a restart keeps the key and the token: nothing new is generated
    token = stack.admin_token
    assert stack.stop() == 0
    stack.start(active=0)
    wait_for(lambda: _post(stack, key).status_code == 200, 45, "the same key after a restart")
    assert stack.admin_token == token and key_file.read_text().strip() == key


def _send_headers_only(stack, key: str | None, length: int = 1_000_000) -> tuple[int, bytes]:
    """A POST that announces a 1 MB body and sends none of it: what nginx answers before reading it."""
    import socket

    port = int(stack.url.rsplit(":", 1)[1])
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
                  f"Content-Length: {length}\r\n\r\n".encode())
        s.settimeout(3)
        try:
            data = s.recv(4096)
        except TimeoutError:
            return 0, b""
    return int(data.split(b" ", 2)[1]), data


def test_a_keyless_request_is_refused_before_its_body_is_read(keyed_stack):
    stack = keyed_stack
    for key, code in ((None, b"missing_api_key"), ("gf-wrong-" + "w" * 24, b"invalid_api_key")):
        status, data = _send_headers_only(stack, key)
        assert status == 401 and code in data and b"WWW-Authenticate: Bearer" in data, data[:400]
    # a keyed one is read: nginx waits for the body it announced (no answer within 3 s)
    assert _send_headers_only(stack, ALICE)[0] == 0
    # the autoscaler's reload probe carries no key: its 401 still names the config generation nginx serves,
    # the one the autoscaler last rendered (else every reload would wait out its confirmation)
    probe = httpx.get(f"{stack.url}/v1/models", timeout=5)
    assert probe.status_code == 401 and probe.headers.get("x-gpufleet-generation"), probe.headers
    assert stack.status()["gateway"]["errors"] == 0, stack.status()["gateway"]
    # and the challenge is on the 401s only
    ok = _post(stack, ALICE)
    assert ok.status_code == 200 and "www-authenticate" not in ok.headers
    nope = _post(stack, ALICE, body={**CHAT, "model": "no-such-model"})
    assert nope.status_code == 404 and "www-authenticate" not in nope.headers


def test_the_activator_answers_the_gateway_only(keyed_stack):
    stack = keyed_stack
    cfg = yaml.safe_load(stack.config_path.read_text())
    act = f"http://127.0.0.1:{cfg['activator']['port']}"
    # straight to it, as anyone on this host (or, in Docker, on the compose networks) could: nothing
    r = httpx.post(f"{act}/v1/chat/completions", json=CHAT, headers={"X-Gpufleet-Pool": "other"}, timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert stack.status()["pools"]["other"]["held"] == 0
    # through the gateway, with a key: the pool at zero is woken and the request served (the activator held it)
    r = _post(stack, ALICE, body={**CHAT, "model": "tiny-other"}, timeout=60)
    assert r.status_code == 200, r.text


def _edge_requests(stack, pool: str) -> float:
    text = httpx.get(f"{stack.admin}/metrics", headers={"Authorization": f"Bearer {stack.admin_token}"},
                     timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("gpufleet_edge_requests_total{") and f'pool="{pool}"' in line)


def test_a_client_cannot_hide_from_the_edge_metrics_with_the_probe_header(keyed_stack):
    """Only the autoscaler's own reload probe, carrying the stack's secret, is left out of the edge metrics."""
    stack = keyed_stack
    before = _edge_requests(stack, "chat")
    for value in ("1", "probe", "true"):
        r = httpx.post(f"{stack.url}/v1/chat/completions", json=CHAT, timeout=30,
                       headers={"Authorization": f"Bearer {ALICE}", "X-Gpufleet-Probe": value})
        assert r.status_code == 200
    wait_for(lambda: _edge_requests(stack, "chat") >= before + 3, 10, "the three requests counted at the edge")


def test_a_replica_answers_its_own_stack_only(keyed_stack):
    """Every replica demands its pool's key (derived from the stack's backend secret): nothing on this host or,
    in Docker, on the backend network reaches a model around the gateway. /health stays open (the readiness
    contract); Prometheus' scrape key opens /metrics and nothing else."""
    stack = keyed_stack
    (rep,) = wait_for(lambda: stack.replicas("chat", role="active", ready=True) or None, 30, "a serving replica")
    url = rep["url"]
    body = {**CHAT, "model": "tiny-chat"}
    own, other = stack.replica_headers("chat"), stack.replica_headers("other")
    scrape = {"Authorization": f"Bearer {(stack.run_dir / 'scrape-key').read_text().strip()}"}
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    for headers in ({}, {"Authorization": f"Bearer {ALICE}"}, other, scrape):
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (headers, r.text)
        assert httpx.post(f"{url}/sleep", headers=headers, timeout=10).status_code == 401
        assert httpx.get(f"{url}/v1/models", headers=headers, timeout=10).status_code == 401
    for headers in ({}, other):
        assert httpx.get(f"{url}/metrics", headers=headers, timeout=10).status_code == 401
    assert httpx.get(f"{url}/metrics", headers=scrape, timeout=10).status_code == 200
    assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=own, timeout=30).status_code == 200
    # the stack itself still reads it: ready, scraped by the autoscaler, and by Prometheus with the scrape key
    assert stack.replicas("chat", role="active", ready=True)
    prom = f"http://127.0.0.1:{stack.prom_port}"

    def scraped() -> bool:
        res = httpx.get(f"{prom}/api/v1/query", params={"query": f'up{{replica="{rep["id"]}"}}'},
                        timeout=5).json()["data"]["result"]
        return any(r["value"][1] == "1" for r in res)  # a role change is a new series beside the old one

    try:
        wait_for(scraped, 60, "Prometheus scraping the replica with the scrape key", interval=1)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{prometheus_diagnosis(stack)}") from None

"""The compose stack's defaults against a real Docker engine: the Docker API only through the proxy's
allow-list, least privilege for every container, API keys and limits at the gateway, the admin token."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time

import httpx

from tests.e2e.conftest import PROJECT
from tests.helpers import wait_for

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

# Run inside the autoscaler's container: what the Docker API proxy lets through, by status code.
PROBE = r"""
import json, httpx
c = httpx.Client(base_url="http://docker-proxy:2375", timeout=10)
me = c.get("/v1.41/containers/json").json()[0]["Id"]
calls = {
  "list": c.get("/v1.41/containers/json"),
  "version": c.get("/version"),
  "exec": c.post(f"/v1.41/containers/{me}/exec", json={"Cmd": ["id"]}),
  "images": c.get("/v1.41/images/json"),
  "pull": c.post("/v1.41/images/create?fromImage=alpine"),
  "volumes": c.get("/v1.41/volumes"),
  "events": c.get("/v1.41/events?until=1"),
  "commit": c.post(f"/v1.41/commit?container={me}"),
  "archive": c.get(f"/v1.41/containers/{me}/archive?path=/"),
  "dotdot": c.get("/v1.41/containers/../images/json"),
  "privileged": c.post("/v1.41/containers/create", json={"Image": "gpufleet/app:latest",
      "Labels": {"io.gpufleet.owner": "x"}, "HostConfig": {"Privileged": True}}),
  "host_root": c.post("/v1.41/containers/create", json={"Image": "gpufleet/app:latest",
      "Labels": {"io.gpufleet.owner": "x"}, "HostConfig": {"Binds": ["/:/host"]}}),
  "host_pid": c.post("/v1.41/containers/create", json={"Image": "gpufleet/app:latest",
      "Labels": {"io.gpufleet.owner": "x"}, "HostConfig": {"PidMode": "host"}}),
  "not_ours": c.post("/v1.41/containers/create", json={"Image": "gpufleet/app:latest"}),
}
print(json.dumps({k: r.status_code for k, r in calls.items()}))
"""


def _inside(stack, *cmd: str) -> str:
    return stack.compose("exec", "-T", "autoscaler", *cmd, timeout=60).stdout


def _post(stack, key: str | None, body: dict = CHAT) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}"} if key else {})


def test_the_docker_api_outside_the_allow_list_is_403(compose_stack):
    codes = json.loads(_inside(compose_stack, "python", "-c", PROBE).strip().splitlines()[-1])
    assert codes["list"] == 200 and codes["version"] == 200, codes
    refused = {k: v for k, v in codes.items() if k not in ("list", "version")}
    assert set(refused.values()) == {403}, codes
    # the autoscaler has no socket of its own: the proxy is its only way to the engine (`test` answers 1 for a
    # path that does not exist, and 0 for one that does: the exec itself works)
    r = compose_stack.compose("exec", "-T", "autoscaler", "test", "-e", "/var/run/docker.sock", check=False)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert compose_stack.compose("exec", "-T", "autoscaler", "test", "-e", "/etc/hostname", check=False).returncode == 0


def _inspect_all(stack) -> list[dict]:
    ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                         capture_output=True, text=True, check=True).stdout.split()
    return json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True,
                                     check=True).stdout)


def test_every_container_runs_with_least_privilege(compose_stack):
    found = _inspect_all(compose_stack)
    services = {c["Config"]["Labels"].get("com.docker.compose.service") for c in found}
    assert {"docker-proxy", "gateway", "nginx-exporter", "prometheus", "autoscaler"} <= services
    assert any(s.startswith("replica-") for s in services), services
    socket_holders = []
    for c in found:
        svc, hc = c["Config"]["Labels"]["com.docker.compose.service"], c["HostConfig"]
        where = f"{svc} ({c['Name']})"
        assert hc["CapDrop"] and "ALL" in hc["CapDrop"] and not hc["CapAdd"], where
        assert any(o.startswith("no-new-privileges") for o in hc["SecurityOpt"] or []), where
        assert hc["ReadonlyRootfs"] is True, where
        assert hc["Memory"] > 0 and (hc["PidsLimit"] or 0) > 0, where
        assert not hc["Privileged"], where
        user = c["Config"]["User"]
        if svc == "docker-proxy":
            assert user in ("0:0", "0", "root"), "the proxy's root is the documented exception (SECURITY.md)"
        else:
            assert user and user.split(":")[0] not in ("0", "root"), f"{where} runs as {user!r}"
        for m in c["Mounts"]:
            if m.get("Source") == "/var/run/docker.sock" or m.get("Destination") == "/var/run/docker.sock":
                socket_holders.append(svc)
                assert m["RW"] is False, "the proxy mounts the socket read-only"
    assert socket_holders == ["docker-proxy"]
    # published ports: the gateway for clients; Prometheus and the admin API on this host only
    ports = {c["Config"]["Labels"]["com.docker.compose.service"]: c["HostConfig"]["PortBindings"] or {}
             for c in found}
    assert {b["HostIp"] for b in ports["prometheus"]["9090/tcp"]} == {"127.0.0.1"}
    assert {b["HostIp"] for b in ports["autoscaler"]["8181/tcp"]} == {"127.0.0.1"}
    assert not any(ports[s] for s in services if s.startswith("replica-") or s in ("docker-proxy", "nginx-exporter"))


def test_replicas_are_reachable_from_the_stack_only(compose_stack):
    # a ready one: a loading replica binds no port yet (vLLM's contract, which the sim engine keeps)
    rep = wait_for(lambda: next((r for r in compose_stack.status()["pools"]["chat"]["replicas"] if r["ready"]), None),
                   60, "a ready replica")
    probe = (f"import httpx\ntry:\n    print(httpx.get('{rep['url']}/health', timeout=3).status_code)\n"
             "except httpx.TransportError as e:\n    print('unreachable', type(e).__name__)")
    assert _inside(compose_stack, "python", "-c", probe).strip() == "200"
    # a container on the clients' side (the edge network) cannot reach it: it runs, and its request finds no route
    r = subprocess.run(["docker", "run", "--rm", "--network", f"{PROJECT}_edge", "gpufleet/app:latest",
                        "python", "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split()[0] == "unreachable", (r.returncode, r.stdout, r.stderr)
    assert r.stdout.split()[1] in ("ConnectTimeout", "ConnectError"), r.stdout
    # nor does a client learn its address from a response
    ok = _post(compose_stack, compose_stack.api_key)
    assert ok.status_code == 200 and ok.headers["x-gpufleet-replica"].startswith("r-chat-")
    assert rep["upstream"].split(":")[0] not in str(ok.headers)


def test_api_keys_401_429_and_models_at_the_docker_gateway(compose_stack):
    stack = compose_stack
    assert _post(stack, None).status_code == 401
    wrong = _post(stack, "gf-not-a-key-000000000000")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"

    def new_key(*args: str) -> str:
        out = _inside(stack, "gpufleet", "keys", "new", *args, "--file", "/var/lib/gpufleet/api-keys.yaml")
        return out.strip().splitlines()[-1]

    flood = new_key("flood", "--requests-per-s", "1", "--burst", "2")
    narrow = new_key("narrow", "--models", "some-other-model")
    for key in (flood, narrow):
        wait_for(lambda k=key: _post(stack, k).status_code != 401, 20, "the new keys taken up by the gateway")
    time.sleep(1.5)  # the flood key's bucket refills from the probe above
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        flooded = list(ex.map(lambda _: _post(stack, flood), range(12)))
        served = list(ex.map(lambda _: _post(stack, stack.api_key), range(4)))
    codes = [r.status_code for r in flooded]
    assert codes.count(429) >= 8, codes
    r429 = next(r for r in flooded if r.status_code == 429)
    assert r429.headers["retry-after"] == "1" and r429.json()["error"]["code"] == "rate_limit_exceeded"
    assert [r.status_code for r in served] == [200] * 4
    denied = _post(stack, narrow)
    assert denied.status_code == 404 and denied.json()["error"]["code"] == "model_not_found"
    # no key in the gateway's log, only names
    logs = stack.compose("logs", "--no-color", "gateway", "autoscaler", check=False).stdout
    assert "key=flood" in logs and flood not in logs and narrow not in logs


def test_admin_api_needs_its_token_and_prometheus_scrapes_with_it(compose_stack):
    stack = compose_stack
    assert httpx.get(f"{stack.admin}/status", timeout=5).status_code == 401
    assert httpx.get(f"{stack.admin}/metrics", timeout=5).status_code == 401
    assert httpx.get(f"{stack.admin}/status", headers=stack.admin_headers, timeout=5).status_code == 200

    def scraped() -> bool:
        res = httpx.get(f"{stack.prom}/api/v1/query", params={"query": 'up{job="gpufleet-autoscaler"}'},
                        timeout=5).json()["data"]["result"]
        return bool(res) and res[0]["value"][1] == "1"

    wait_for(scraped, 60, "Prometheus scraping the autoscaler with the token", interval=1)

    def replicas_scraped() -> bool:
        # every replica, llama.cpp's included, which demands a key on /metrics: the stack's scrape key
        res = httpx.get(f"{stack.prom}/api/v1/query", params={"query": 'up{job="gpufleet-replicas"}'},
                        timeout=5).json()["data"]["result"]
        return {r["metric"]["pool"] for r in res if r["value"][1] == "1"} >= {"chat", "llama"}

    wait_for(replicas_scraped, 60, "Prometheus scraping the sim and llama.cpp replicas with the scrape key",
             interval=1)
    # the lifecycle API is off: nobody who reaches Prometheus can stop it
    assert httpx.post(f"{stack.prom}/-/quit", timeout=5).status_code == 403


FROM_A_REPLICA = r"""
import httpx, json
chat = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
out = {
  "activator": httpx.post("http://autoscaler:8182/v1/chat/completions", json=chat, timeout=10,
                          headers={"X-Gpufleet-Pool": "chat"}).status_code,
  "activator, a guessed secret": httpx.post("http://autoscaler:8182/v1/chat/completions", json=chat, timeout=10,
                          headers={"X-Gpufleet-Pool": "chat", "X-Gpufleet-Gateway": "1"}).status_code,
  "admin status": httpx.get("http://autoscaler:8181/status", timeout=10).status_code,
  "admin gpus": httpx.get("http://autoscaler:8181/gpus", timeout=10).status_code,
  "admin metrics": httpx.get("http://autoscaler:8181/metrics", timeout=10).status_code,
}
# the replicas themselves, around the gateway: each demands its own pool's key (and /health stays open)
for name, url, model in REPLICAS:
    body = {**chat, "model": model}
    out[f"{name} chat"] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10).status_code
    out[f"{name} metrics"] = httpx.get(f"{url}/metrics", timeout=10).status_code
    out[f"{name} health"] = httpx.get(f"{url}/health", timeout=10).status_code
print(json.dumps(out))
"""


def test_from_inside_a_replica_the_activator_and_the_admin_api_give_nothing(compose_stack):
    """A compromised replica (a malicious model, an engine bug) reaches the autoscaler on the backend network:
    no keyless inference through the activator, nothing of the admin API without its token."""
    stack = compose_stack
    wait_for(lambda: len(stack.active()) >= 1, 60, "a serving replica")
    pools = stack.status()["pools"]
    me = stack.active()[0]
    # its own replica, another of its pool (the warm one), and llama.cpp's (another pool, a third-party engine)
    targets = [("self", me["url"], "tiny-chat")]
    targets += [("peer", r["url"], "tiny-chat") for r in pools["chat"]["replicas"] if r["id"] != me["id"]
                and r["ready"]][:1]
    targets += [("llama", r["url"], "tiny-llama") for r in pools["llama"]["replicas"] if r["ready"]][:1]
    assert len(targets) == 3, targets
    (c,) = stack.containers(f"io.gpufleet.replica={me['id']}")
    script = f"REPLICAS = {targets!r}\n" + FROM_A_REPLICA
    r = subprocess.run(["docker", "exec", c["ID"], "python", "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    codes = json.loads(r.stdout.strip().splitlines()[-1])
    expected = {"activator": 403, "activator, a guessed secret": 403, "admin status": 401, "admin gpus": 401,
                "admin metrics": 401}
    for name in ("self", "peer", "llama"):
        expected |= {f"{name} chat": 401, f"{name} metrics": 401, f"{name} health": 200}
    assert codes == expected, codes

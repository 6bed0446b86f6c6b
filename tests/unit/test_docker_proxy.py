"""The Docker API proxy's routing and per-container decisions (the engine stands in as a table of
containers here; tests/e2e runs the proxy against the real engine)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from autoscaler.docker_guard import Policy
from autoscaler.docker_proxy import DockerProxy

P = Policy(project="gf", network="gf_backend", images=frozenset({"gpufleet/app:latest"}), volumes=frozenset())
CONTAINERS = {
    "rep": {"Id": "a" * 64, "Config": {"Labels": {"io.gpufleet.owner": "gf", "io.gpufleet.replica": "r-chat-1",
                                                  "com.docker.compose.project": "gf"}}},
    "gw": {"Id": "b" * 64, "Config": {"Labels": {"com.docker.compose.project": "gf",
                                                 "com.docker.compose.service": "gateway"}}},
    "proxy": {"Id": "c" * 64, "Config": {"Labels": {"com.docker.compose.project": "gf",
                                                    "com.docker.compose.service": "docker-proxy"}}},
    "foreign": {"Id": "d" * 64, "Config": {"Labels": {"com.docker.compose.project": "other"}}},
    "scaler": {"Id": "e" * 64, "Config": {"Labels": {"com.docker.compose.project": "gf",
                                                     "com.docker.compose.service": "autoscaler"}}},
}


def _json(status: int, obj: object) -> httpx.Response:
    # a socket streams its answers: read once, by whoever reads them
    return httpx.Response(status, headers={"content-type": "application/json"},
                          stream=httpx.ByteStream(json.dumps(obj).encode()))


def engine_app(seen: list[str]) -> httpx.MockTransport:
    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(f"{req.method} {req.url.raw_path.decode()}")
        parts = [x for x in req.url.path.strip("/").split("/") if not x.startswith("v1.")]
        if req.method == "GET" and len(parts) == 3 and parts[0] == "containers" and parts[2] == "json":
            c = CONTAINERS.get(parts[1]) or next((c for c in CONTAINERS.values() if c["Id"] == parts[1]), None)
            return _json(200, c) if c else _json(404, {"message": "no such container"})
        if req.url.path.endswith("/containers/json"):
            return _json(200, [{"Id": c["Id"], "Labels": c["Config"]["Labels"]} for c in CONTAINERS.values()])
        return httpx.Response(204, stream=httpx.ByteStream(b""))  # a socket streams its answers
    return httpx.MockTransport(handle)


def call(method: str, raw_path: str, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, list[str], bytes]:
    seen: list[str] = []

    async def go() -> tuple[int, bytes]:
        engine = httpx.AsyncClient(transport=engine_app(seen), base_url="http://docker")
        proxy = DockerProxy(P, engine)
        path, _, query = raw_path.partition("?")
        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
                 "query_string": query.encode(), "headers": headers or []}
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(msg: dict) -> None:
            sent.append(msg)

        await proxy(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    status, body = asyncio.run(go())
    return status, seen, body


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/v1.41/containers/rep/stop?t=10", 204),
    ("DELETE", "/v1.41/containers/rep?force=True", 204),
    ("POST", "/v1.41/containers/rep/rename?name=gf-r-chat-1--draining", 204),
    ("POST", "/v1.41/containers/gw/kill?signal=SIGHUP", 204),
    ("GET", "/v1.41/containers/scaler/json", 200),
    # not this stack's replicas
    ("POST", "/v1.41/containers/foreign/stop", 403),
    ("DELETE", "/v1.41/containers/proxy?force=True", 403),
    ("GET", "/v1.41/containers/proxy/json", 403),
    ("GET", "/v1.41/containers/foreign/json", 403),
    ("GET", "/v1.41/containers/gw/json", 403),  # its environment is nobody's business
    ("POST", "/v1.41/containers/gw/kill?signal=SIGKILL", 403),
    ("POST", "/v1.41/containers/gw/stop", 403),
    ("POST", "/v1.41/containers/rep/kill?signal=SIGHUP", 403),
    ("POST", "/v1.41/containers/rep/rename?name=gf-r-other-2--active", 403),  # another replica's identity
    ("POST", "/v1.41/containers/rep/rename?name=evil", 403),
    ("DELETE", "/v1.41/containers/rep?link=true", 403),
    ("POST", "/v1.41/containers/rep/stop?t=10&t=1", 403),
    ("POST", "/v1.41/containers/rep/exec", 403),
    ("GET", "/v1.41/containers/rep/logs", 403),
    ("POST", "/v1.23/containers/rep/start", 403),  # an engine that old reads a HostConfig at start
    # what an HTTP client would normalise away, sent raw
    ("GET", "/v1.41/containers/../images/json", 403),
    ("GET", "/v1.41/containers/rep/../../images/json", 403),
    ("POST", "/v1.41/containers/%72ep/stop", 403),
    ("GET", "/v1.41//containers/json", 403),
    ("GET", "/v1.41/volumes", 403),
    ("POST", "/v1.41/images/create?fromImage=alpine", 403),
])
def test_per_container_calls_only_on_this_stacks_replicas(method, path, status):
    got, seen, body = call(method, path)
    assert got == status, body
    if status == 403:
        assert not [s for s in seen if not s.startswith("GET /containers/")], f"forwarded: {seen}"
        assert b"gpufleet docker-proxy" in body


def test_calls_reach_the_engine_by_the_id_it_resolved_not_by_the_callers_name():
    _, seen, _ = call("POST", "/v1.41/containers/rep/stop?t=3")
    assert seen[-1] == f"POST /v1.41/containers/{'a' * 64}/stop?t=3"


def test_the_list_is_this_projects_and_never_the_proxy():
    status, seen, body = call("GET", '/v1.41/containers/json?all=1&filters={"label":["io.gpufleet.owner=gf"]}')
    assert status == 200
    ids = {c["Id"][0] for c in json.loads(body)}
    assert ids == {"a", "b", "e"}
    forwarded = httpx.URL("http://x" + seen[0].split(" ", 1)[1]).params["filters"]
    assert "com.docker.compose.project=gf" in json.loads(forwarded)["label"]


def test_the_proxy_serves_under_uvicorn():
    """The ASGI app as uvicorn runs it (lifespan included: uvicorn binds only once startup is acknowledged)."""
    import threading

    import uvicorn

    from tests.helpers import free_port, wait_for

    port = free_port()
    engine = httpx.AsyncClient(transport=engine_app([]), base_url="http://docker")
    server = uvicorn.Server(uvicorn.Config(DockerProxy(P, engine), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        r = wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/v1.41/containers/foreign/json", timeout=2), 10,
                     "the proxy listening")
        assert r.status_code == 403 and "not a container of this stack" in r.json()["message"]
    finally:
        server.should_exit = True
        t.join(5)


def test_oversized_headers_are_refused_before_anything_reaches_the_engine():
    status, seen, _ = call("GET", "/v1.41/containers/json", headers=[(b"x-pad", b"x" * 65536)])
    assert status == 431 and seen == []

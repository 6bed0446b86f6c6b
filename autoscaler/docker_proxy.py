"""`gpufleet docker-proxy`: the Docker API for the autoscaler, and only what it needs.

The only holder of the Docker socket. It listens on the stack's internal docker-api network; the
autoscaler's SDK talks to it as to an engine. Each request is matched on its raw path (no percent-encoding,
no dot segments: what is checked is what is forwarded), and:

- GET /_ping, /version, /info (the SDK's handshake; the runtimes, for GPU detection);
- GET /containers/json: the project's containers only (the filter is forced and the answer filtered);
- POST /containers/create: `docker_guard.check_create` on the decoded body; the proxy forwards its own
  re-serialisation, never the caller's bytes; named volumes must be the project's (asked of the engine);
- per-container routes resolve the name or id with the engine first and act on the full id it answered:
  inspect, start (no body), stop, rename, wait, remove on this project's replicas (and the NVML helper);
  kill on them, and SIGHUP alone on the project's gateway; inspect of the autoscaler's own container;
- GET /images/<id>/json of the fleet's images (the autoscaler's own image discovery).
Everything else is a 403 with Docker's error shape, saying why.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx

from autoscaler.docker_guard import MAX_BODY, Policy, Refused, check_create

log = logging.getLogger("gpufleet.docker_proxy")

SOCKET = "/var/run/docker.sock"
MAX_HEADERS = 16 * 1024
MIN_API = (1, 40)  # older versions read a HostConfig sent with start; Debian's engine speaks 1.41
_VER = r"(?:/v(?P<major>1)\.(?P<minor>[0-9]{2}))?"
_REF = r"(?P<ref>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})"
ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple((m, re.compile(f"^{_VER}{p}$"), name) for m, p, name in (
    ("GET", r"/_ping", "ping"), ("HEAD", r"/_ping", "ping"), ("GET", r"/version", "version"),
    ("GET", r"/info", "info"),
    ("GET", r"/containers/json", "list"),
    ("POST", r"/containers/create", "create"),
    ("GET", rf"/containers/{_REF}/json", "inspect"),
    ("POST", rf"/containers/{_REF}/(?P<op>start|stop|kill|rename|wait)", "lifecycle"),
    ("DELETE", rf"/containers/{_REF}", "remove"),
    ("GET", r"/images/(?P<image>[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,255})/json", "image"),
))
REPLICA_SIGNALS = ("SIGTERM", "SIGKILL", "SIGINT", "SIGQUIT", "15", "9")
INFO_KEYS = ("ID", "ServerVersion", "Runtimes", "DefaultRuntime", "NCPU", "MemTotal", "OperatingSystem",
             "Architecture", "KernelVersion", "CDISpecDirs", "DiscoveredDevices")
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
       "proxy-authenticate", "content-length", "host"}


class Denied(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass
class Target:
    id: str
    labels: dict[str, str]

    def is_replica(self, project: str) -> bool:
        return self.labels.get("io.gpufleet.owner") == project

    def service(self, project: str) -> str | None:
        if self.labels.get("com.docker.compose.project") != project:
            return None
        return self.labels.get("com.docker.compose.service")


Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class DockerProxy:
    """An ASGI app. `policy` says what a create may hold; `engine` reaches the real socket."""

    def __init__(self, policy: Policy, engine: httpx.AsyncClient) -> None:
        self.policy = policy
        self.engine = engine

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # uvicorn binds only once startup is acknowledged
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        try:
            await self.handle(scope, receive, send)
        except Denied as e:
            log.warning("refused %s %s: %s", scope["method"], scope.get("raw_path", b"")[:200], e)
            await _json(send, e.status, {"message": f"gpufleet docker-proxy: {e}"})
        except Refused as e:
            log.warning("refused %s %s: %s", scope["method"], scope.get("raw_path", b"")[:200], e)
            await _json(send, 403, {"message": f"gpufleet docker-proxy: {e}"})
        except httpx.HTTPError as e:
            await _json(send, 502, {"message": f"gpufleet docker-proxy: the engine: {type(e).__name__}: {e}"})

    async def handle(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        # the SDK's headers are a few hundred bytes; nothing of them is forwarded, and nothing large is read
        if sum(len(k) + len(v) for k, v in scope.get("headers", ())) > MAX_HEADERS:
            raise Denied(431, f"request headers larger than {MAX_HEADERS} bytes")
        method = scope["method"]
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw.decode("ascii", errors="replace")
        if "%" in path or "/./" in path or "/../" in path or "//" in path or path.endswith(("/.", "/..")):
            raise Denied(403, "an encoded or dot-segment path")
        query = parse_qsl(scope.get("query_string", b"").decode("ascii", errors="replace"), keep_blank_values=True,
                          strict_parsing=False, max_num_fields=16)
        if len({k for k, _ in query}) != len(query):
            raise Denied(403, "a query parameter twice")
        q = dict(query)
        found = next(((name, m) for verb, rx, name in ROUTES if verb == method and (m := rx.match(path))), None)
        if found is None:
            raise Denied(403, f"{method} {path[:100]} is not a call gpufleet makes")
        name, match = found
        if match.group("minor") and (1, int(match.group("minor"))) < MIN_API:
            raise Denied(403, f"API version 1.{match.group('minor')} (older than 1.{MIN_API[1]})")
        body = await _body(receive, MAX_BODY)
        prefix = f"/v1.{match.group('minor')}" if match.group("minor") else ""
        p = self.policy
        if name in ("ping", "version"):
            _no_query(q, ())
            await self.forward(send, method, path, {}, None)
        elif name == "info":
            _no_query(q, ())
            r = await self.engine.get(f"{prefix}/info")
            info = r.json() if r.status_code == 200 else {}
            await _json(send, r.status_code, {k: info[k] for k in INFO_KEYS if k in info})
        elif name == "list":
            await self.list_containers(send, prefix, q)
        elif name == "create":
            _no_query(q, ("name",))
            obj = check_create(body, q.get("name"), p)
            for m in obj["HostConfig"].get("Mounts", []):
                await self.require_volume(m["Source"])
            await self.forward(send, "POST", f"{prefix}/containers/create", {"name": q["name"]},
                               json.dumps(obj, separators=(",", ":")).encode())
        elif name == "image":
            await self.inspect_image(send, prefix, match.group("image"), q)
        else:
            if body:
                raise Denied(403, "a body on a container call (an old engine would read a HostConfig there)")
            t = await self.resolve(match.group("ref"))
            op = "inspect" if name == "inspect" else "remove" if name == "remove" else match.group("op")
            params = self.allow(t, op, q)
            path = f"{prefix}/containers/{t.id}" + ("" if op == "remove" else "/json" if op == "inspect" else f"/{op}")
            await self.forward(send, method, path, params, None)

    # ---- decisions on a resolved container ----------------------------------------------------------

    def allow(self, t: Target, op: str, q: dict[str, str]) -> dict[str, str]:
        """The query to forward for op on t, or Denied. Replicas (and the NVML helper) are the project's own."""
        project = self.policy.project
        service = t.service(project)
        mine = t.is_replica(project)
        if op == "inspect":
            if not (mine or service == "autoscaler"):
                raise Denied(403, "inspect: not a container of this stack's autoscaler")
            _no_query(q, ("size",))
            return {}
        if op == "kill":
            _no_query(q, ("signal",))
            sig = q.get("signal", "SIGKILL")
            if service == "gateway" and sig == "SIGHUP":
                return {"signal": sig}
            if mine and sig in REPLICA_SIGNALS:
                return {"signal": sig}
            raise Denied(403, f"kill {sig}: only SIGHUP to this stack's gateway, or a stop signal to a replica")
        if not mine:
            raise Denied(403, f"{op}: not one of this stack's replicas")
        if op == "start":
            _no_query(q, ())
            return {}
        if op == "stop":
            _no_query(q, ("t", "signal"))
            if "signal" in q and q["signal"] not in REPLICA_SIGNALS:
                raise Denied(403, f"stop with signal {q['signal']!r}")
            if "t" in q and not (q["t"].isdigit() and int(q["t"]) <= 600):
                raise Denied(403, "stop: t is 0-600 seconds")
            return q
        if op == "wait":
            _no_query(q, ("condition",))
            if q.get("condition", "not-running") not in ("not-running", "next-exit", "removed"):
                raise Denied(403, "wait: an unknown condition")
            return q
        if op == "rename":
            _no_query(q, ("name",))
            rid = t.labels.get("io.gpufleet.replica", "")
            new = q.get("name", "")
            if not rid or not re.fullmatch(rf"{re.escape(project)}-{re.escape(rid)}--[a-z.-]{{1,80}}", new):
                raise Denied(403, f"rename to {new!r}: a replica keeps its project and id in its name")
            return {"name": new}
        if op == "remove":
            _no_query(q, ("v", "force", "link"))
            if q.get("link", "0").lower() not in ("0", "false"):
                raise Denied(403, "remove: link")
            return q
        raise Denied(403, op)

    async def resolve(self, ref: str) -> Target:
        """The container the engine means by ref (a name or an id prefix), as the engine answers it."""
        r = await self.engine.get(f"/containers/{quote(ref, safe='')}/json")
        if r.status_code == 404:
            raise Denied(404, f"no such container: {ref}")
        if r.status_code != 200:
            raise Denied(502, f"inspect {ref}: the engine answered {r.status_code}")
        d = r.json()
        return Target(d["Id"], (d.get("Config") or {}).get("Labels") or {})

    async def require_volume(self, name: str) -> None:
        r = await self.engine.get(f"/volumes/{quote(name, safe='')}")
        if r.status_code != 200:
            raise Denied(403, f"volume {name}: not found (compose creates the stack's volumes)")
        labels = r.json().get("Labels") or {}
        if labels.get("com.docker.compose.project") != self.policy.project:
            raise Denied(403, f"volume {name} is not this stack's (compose project {self.policy.project})")

    async def list_containers(self, send: Send, prefix: str, q: dict[str, str]) -> None:
        _no_query(q, ("all", "limit", "size", "trunc_cmd", "filters"))
        filters = _filters(q.get("filters"))
        filters.setdefault("label", []).append(f"com.docker.compose.project={self.policy.project}")
        params = {k: v for k, v in q.items() if k != "filters"} | {"filters": json.dumps(filters)}
        r = await self.engine.get(f"{prefix}/containers/json", params=params)
        items = r.json() if r.status_code == 200 else []
        # the engine's filter, and again here: only this project's containers, never the proxy itself
        keep = [c for c in items if (c.get("Labels") or {}).get("com.docker.compose.project") == self.policy.project
                and (c.get("Labels") or {}).get("com.docker.compose.service") != "docker-proxy"]
        await _json(send, r.status_code, keep)

    async def inspect_image(self, send: Send, prefix: str, ref: str, q: dict[str, str]) -> None:
        _no_query(q, ())
        r = await self.engine.get(f"{prefix}/images/{quote(ref, safe=':@/')}/json")
        if r.status_code != 200:
            raise Denied(r.status_code if r.status_code == 404 else 502, f"image {ref}: {r.status_code}")
        d = r.json()
        if not set(d.get("RepoTags") or []) & self.policy.images:
            raise Denied(403, f"image {ref}: not an image of this fleet")
        await _json(send, 200, d)

    async def forward(self, send: Send, method: str, path: str, params: dict[str, str],
                      body: bytes | None) -> None:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        req = self.engine.build_request(method, path, params=params or None, content=body, headers=headers)
        r = await self.engine.send(req, stream=True)
        try:
            out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in r.headers.items()
                   if k.lower() not in HOP]
            await send({"type": "http.response.start", "status": r.status_code, "headers": out})
            async for chunk in r.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await r.aclose()


def _filters(raw: str | None) -> dict[str, list[str]]:
    if not raw:
        return {}
    try:
        f = json.loads(raw)
    except ValueError:
        raise Denied(400, "filters: not JSON") from None
    if not isinstance(f, dict) or set(f) - {"label", "status", "name", "id"}:
        raise Denied(403, "filters: label, status, name and id only")
    out: dict[str, list[str]] = {}
    for k, v in f.items():
        vals = list(v) if isinstance(v, dict) else v
        if not isinstance(vals, list) or not all(isinstance(x, str) and len(x) < 512 for x in vals):
            raise Denied(403, f"filters.{k}: strings")
        out[k] = vals
    return out


def _no_query(q: dict[str, str], allowed: Iterable[str]) -> None:
    extra = set(q) - set(allowed)
    if extra:
        raise Denied(403, f"query parameter {sorted(extra)[0]!r} is not one gpufleet sends")


async def _body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise Denied(400, "client went away")
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Denied(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


async def _json(send: Send, status: int, obj: Any) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---- the policy, from the stack -----------------------------------------------------------------------


def policy_from_fleet(fleet: Path | None, project: str, network: str, stack_image: str) -> Policy:
    """What replicas of this fleet may be: its images and volumes, its largest GPU count. The fleet file is
    read as the autoscaler reads it, without the files it names (the proxy holds none of them)."""
    import yaml

    from autoscaler.config import DEFAULT_CONFIG, parse_config

    data = yaml.safe_load(fleet.read_text()) if fleet else DEFAULT_CONFIG
    cfg = parse_config(data, str(fleet or "built-in default"))
    images = {stack_image}
    volumes: set[str] = set()
    for pool in cfg.pools:
        e = pool.engine_spec
        if e.image:
            images.add(e.image)
        volumes.update(f"{project}_{v}" for v in e.volumes)
    secrets = f"{project}_replica-secrets"
    return Policy(project=project, network=network, images=frozenset(images),
                  volumes=frozenset(volumes | {secrets}), read_only_volumes=frozenset({secrets}),
                  max_gpus=max([p.gpus_per_replica for p in cfg.pools] + [1]), stack_image=stack_image,
                  nvml_helper=f"{project}-nvml")


async def own_project(engine: httpx.AsyncClient) -> str:
    env = os.environ.get("GPUFLEET_PROJECT")
    if env:
        return env
    r = await engine.get(f"/containers/{socket.gethostname()}/json")
    r.raise_for_status()
    project: str | None = (r.json().get("Config", {}).get("Labels") or {}).get("com.docker.compose.project")
    if not project:
        raise RuntimeError("the proxy is not a compose service: set GPUFLEET_PROJECT")
    return project


async def serve(host: str = "0.0.0.0", port: int = 2375, sock: str = SOCKET) -> None:
    import uvicorn

    engine = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=sock), base_url="http://docker",
                               timeout=httpx.Timeout(130.0, connect=5.0))
    project = await own_project(engine)
    net = os.environ.get("GPUFLEET_NETWORK", "backend")
    fleet = os.environ.get("GPUFLEET_CONFIG")
    image = os.environ.get("GPUFLEET_REPLICA_IMAGE", "gpufleet/app:latest")
    policy = policy_from_fleet(Path(fleet) if fleet else None, project, f"{project}_{net}", image)
    log.info("docker-proxy for project %s: images %s, volumes %s, up to %d GPUs a replica", project,
             sorted(policy.images), sorted(policy.volumes), policy.max_gpus)
    server = uvicorn.Server(uvicorn.Config(DockerProxy(policy, engine), host=host, port=port, log_level="warning",
                                           access_log=False, log_config=None, h11_max_incomplete_event_size=16 * 1024,
                                           limit_concurrency=64, timeout_keep_alive=30))
    try:
        await server.serve()
    finally:
        await engine.aclose()

"""Replicas as Docker containers, through the Docker SDK.

What never changes about a replica (pool, model, GPU ids, config hash, creation
time) is in its labels. Docker labels are immutable, so the one thing that
changes — the role — is kept in the container's *name*, which Docker lets us
rename atomically: `<project>-<pool>-<id>--<role>` (role `starting.active`,
`starting.warm`, `warm`, `active`, `draining` — `draining.for-<pool>` when its
GPUs are promised to another pool — and `stopping` once a removal has begun). Both survive an autoscaler
restart; `docker ps` shows them.

Replicas carry the compose project label so `docker compose ps` lists them,
but no service label compose declares, so `docker compose up -d` never scales
them away. Stopping the autoscaler (SIGTERM, as `docker compose down` does)
stops its fleet; killing it leaves the fleet serving for the next one to adopt.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from typing import Any

from autoscaler.gateway.nginx import PROBE_HEADERS
from autoscaler.runtime.base import Replica, ReplicaSpec, Role, fill_argv

L = "io.gpufleet."
REPLICA_PORT = 8000
REPLICA_USER = "65534:65534"  # nobody: a replica needs no account of its own


def container_name(project: str, pool: str, rid: str, role: Role, target: Role, claimed_for: str | None = None) -> str:
    r = f"starting.{target}" if role == "starting" else role
    if role == "draining" and claimed_for:
        r = f"draining{CLAIMED}{claimed_for}"  # pool names are [a-z0-9-]: fine in a container name
    return f"{project}-{rid}--{r}"


CLAIMED = ".for-"


def parse_claim(name: str) -> str | None:
    """The pool a draining replica's GPUs are promised to, from its container name (None: an ordinary drain)."""
    _, sep, r = name.lstrip("/").rpartition("--")
    if sep and r.startswith(f"draining{CLAIMED}"):
        return r[len(f"draining{CLAIMED}"):] or None
    return None


STOPPING = "stopping"


def parse_role(name: str) -> tuple[Role, Role] | None:
    """(role, target) from a container name; a stopping replica reads as draining (see is_stopping)."""
    _, sep, r = name.lstrip("/").rpartition("--")
    if not sep:
        return None
    if r == STOPPING:
        return "draining", "draining"
    if r.startswith("starting."):
        target = r.split(".", 1)[1]
        return ("starting", target) if target in ("active", "warm") else None  # type: ignore[return-value]
    if r in ("warm", "active", "draining"):
        return r, r  # type: ignore[return-value]
    if r.startswith(f"draining{CLAIMED}"):
        return "draining", "draining"
    return None


class DockerRuntime:
    name = "docker"

    def __init__(self, client: Any, project: str, network: str, image: str, gpus_visible: bool = False,
                 env: dict[str, str] | None = None) -> None:
        self.client = client
        self.project = project
        self.network = network
        self.image = image
        self.gpus_visible = gpus_visible  # NVIDIA runtime present: pin by DeviceRequest
        self.env = env or {}
        # When each replica got its role. Not in Docker (labels are immutable): a restarted
        # autoscaler starts the clock at adoption, so a drain in progress waits its settle time again.
        self._since: dict[str, float] = {}

    def _mine(self) -> list[Any]:
        return self.client.containers.list(all=True, filters={"label": [f"{L}owner={self.project}"]})

    def _to_replica(self, c: Any) -> Replica | None:
        labels = c.labels
        parsed = parse_role(c.name)
        if parsed is None:
            return None
        role, target = parsed
        nets = c.attrs.get("NetworkSettings", {}).get("Networks", {})
        ip = (nets.get(self.network) or {}).get("IPAddress") or ""
        gpus = tuple(g for g in labels.get(f"{L}gpus", "").split(",") if g)
        return Replica(
            id=labels[f"{L}replica"],
            pool=labels[f"{L}pool"],
            model=labels.get(f"{L}model", ""),
            role=role,
            target_role=target,
            url=f"http://{ip}:{REPLICA_PORT}",
            upstream=f"{ip}:{REPLICA_PORT}",
            gpus=gpus,
            config_hash=labels.get(f"{L}config-hash", ""),
            created_at=float(labels.get(f"{L}created-at", "0")),
            alive=c.status == "running" and bool(ip),
            role_since=self._since.setdefault(f"{labels[f'{L}replica']}:{role}", time.time()),
            stopping=c.name.lstrip("/").endswith(f"--{STOPPING}"),
            claimed_for=parse_claim(c.name),
            labels={"container": c.id[:12], "name": c.name},
        )

    def list(self) -> list[Replica]:
        out = []
        for c in self._mine():
            r = self._to_replica(c)
            if r is not None:
                out.append(r)
        # role clocks of replicas that are gone: the map never outgrows the fleet
        keep = {f"{r.id}:{r.role}" for r in out}
        for k in [k for k in self._since if k not in keep]:
            del self._since[k]
        return out

    def _find(self, rid: str) -> Any:
        found = self.client.containers.list(all=True, filters={"label": [f"{L}replica={rid}"]})
        if not found:
            raise KeyError(rid)
        return found[0]

    def create(self, spec: ReplicaSpec) -> Replica:
        from docker.types import DeviceRequest

        rid = f"r-{spec.pool}-{uuid.uuid4().hex[:8]}"
        labels = {
            f"{L}owner": self.project,
            f"{L}replica": rid,
            f"{L}pool": spec.pool,
            f"{L}model": spec.model,
            f"{L}gpus": ",".join(spec.gpus),
            f"{L}config-hash": spec.config_hash,
            f"{L}created-at": f"{time.time():.3f}",
            # listed by `docker compose ps`, owned by no declared service
            "com.docker.compose.project": self.project,
            "com.docker.compose.service": f"replica-{spec.pool}",
            "com.docker.compose.oneoff": "False",
            # compose lists only containers that carry a config hash
            "com.docker.compose.config-hash": spec.config_hash,
        }
        argv = fill_argv(spec.argv, model=spec.model, port=REPLICA_PORT, host="0.0.0.0", replica_id=rid)
        if argv and "python" in argv[0].rsplit("/", 1)[-1]:
            argv[0] = "python"  # the image's interpreter, not the path the autoscaler runs from
        kwargs: dict[str, Any] = {}
        if spec.gpus and self.gpus_visible and not any(g.startswith("vslot") for g in spec.gpus):
            kwargs["device_requests"] = [DeviceRequest(device_ids=list(spec.gpus), capabilities=[["gpu"]])]
        if spec.cpus:
            kwargs["cpuset_cpus"] = ",".join(str(c) for c in spec.cpus)
        if spec.memory_limit:
            kwargs["mem_limit"] = spec.memory_limit
        if spec.pids_limit:
            kwargs["pids_limit"] = spec.pids_limit
        c = self.client.containers.create(
            spec.image or self.image,
            command=argv,
            name=container_name(self.project, spec.pool, rid, "starting", spec.target_role),
            labels=labels,
            # HOME: nobody has none, and engines keep caches there (a read-only root otherwise)
            environment={"HOME": "/tmp", **self.env, "GPUFLEET_REPLICA_ID": rid},
            network=self.network,
            detach=True,
            restart_policy={"Name": "no"},
            # least privilege: nobody, no capabilities, nothing gained by exec'ing setuid binaries, a root
            # file system it cannot change; /tmp (and /dev/shm, Docker's own) are where it may write
            user=REPLICA_USER,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            read_only=True,
            tmpfs={"/tmp": "rw,nosuid,nodev,size=1g"},
            **kwargs,
        )
        c.start()
        c.reload()
        r = self._to_replica(c)
        assert r is not None
        return r

    def set_role(self, replica_id: str, role: Role, target_role: Role | None = None,
                 claimed_for: str | None = None) -> None:
        c = self._find(replica_id)
        current = parse_role(c.name)
        target = target_role or (current[1] if current else role)
        if role != "starting":
            target = role
        c.rename(container_name(self.project, "", replica_id, role, target, claimed_for))
        self._since[f"{replica_id}:{role}"] = time.time()

    def remove(self, replica_id: str, grace_s: float = 10.0) -> None:
        import docker.errors

        try:
            c = self._find(replica_id)
        except KeyError:
            return
        if not c.name.lstrip("/").endswith(f"--{STOPPING}"):
            # before the stop signal: a restarted autoscaler sees it stopping and finishes the job
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                c.rename(f"{self.project}-{replica_id}--{STOPPING}")
        # Another remover (shutdown racing a scale-down) may get there first: gone is gone.
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            c.stop(timeout=int(grace_s))
        with contextlib.suppress(docker.errors.NotFound):
            try:
                c.remove(force=True)
            except docker.errors.APIError as e:
                if "already in progress" not in str(e):
                    raise


class DockerNginx:
    """nginx in its own container, reloaded by SIGHUP (the Docker API's kill, which the proxy allows).

    The check is `nginx -t` in the autoscaler's own container, from the same Debian packages as the
    gateway's, on the same files at the same path (the shared volume): exec into the gateway would need
    the Docker API's exec, which is a shell in any container, so the proxy refuses it."""

    CONF = "/etc/nginx/gpufleet/nginx.conf"
    RUN_DIR = "/var/run/gpufleet-nginx"

    def __init__(self, client: Any, project: str, service: str = "gateway") -> None:
        self.client = client
        self.project = project
        self.service = service

    def _container(self) -> Any:
        found = self.client.containers.list(filters={"label": [f"com.docker.compose.project={self.project}",
                                                                f"com.docker.compose.service={self.service}"]})
        if not found:
            raise RuntimeError(f"no running {self.service} container in compose project {self.project}")
        return found[0]

    def validate(self) -> tuple[bool, str]:
        """`nginx -t` on the rendered files. No nginx here (an image of another build) raises: the check
        could not run, which the Gateway retries, unlike a config nginx rejects."""
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        # -t writes the pid file and makes the temp dirs, as a start would: on the tmpfs compose gives
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(f"{self.RUN_DIR}/tmp/{d}", exist_ok=True)
        r = subprocess.run([binary, "-t", "-q", "-e", "/dev/stderr", "-c", self.CONF],
                           capture_output=True, text=True, timeout=30)
        return r.returncode == 0, r.stderr + r.stdout

    def reload(self) -> None:
        self._container().kill(signal="SIGHUP")

    def probe(self, port: int = 8080) -> str | None:
        """The generation the gateway serves, asked over the compose network by its service name."""
        import httpx

        with httpx.Client(timeout=1.0) as c:
            r = c.get(f"http://{self.service}:{port}/v1/models", headers=PROBE_HEADERS)
            return r.headers.get("x-gpufleet-generation")

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
from pathlib import Path
from typing import Any

from autoscaler.backend_auth import BackendKeys
from autoscaler.engines import NOBODY
from autoscaler.gateway.nginx import probe_headers
from autoscaler.runtime.base import Replica, ReplicaSpec, Role, engine_argv, replica_env

L = "io.gpufleet."
REPLICA_PORT = 8000
REPLICA_USER = NOBODY  # the stack's image runs sim replicas as nobody: they need no account of their own


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


_TARGETS: dict[str, Role] = {"active": "active", "warm": "warm"}  # what a starting replica becomes
_SETTLED: dict[str, Role] = {"warm": "warm", "active": "active", "draining": "draining"}


def parse_role(name: str) -> tuple[Role, Role] | None:
    """(role, target) from a container name; a stopping replica reads as draining (see is_stopping)."""
    _, sep, r = name.lstrip("/").rpartition("--")
    if not sep:
        return None
    if r == STOPPING:
        return "draining", "draining"
    if r.startswith("starting."):
        target = _TARGETS.get(r.split(".", 1)[1])
        return ("starting", target) if target is not None else None
    settled = _SETTLED.get(r)
    if settled is not None:
        return settled, settled
    if r.startswith(f"draining{CLAIMED}"):
        return "draining", "draining"
    return None


SECRETS_MOUNT = "/run/gpufleet-secrets"  # where replicas see the secrets volume (read-only)


def create_kwargs(spec: ReplicaSpec, rid: str, *, project: str, network: str, default_image: str,
                  gpus_visible: bool, env: dict[str, str] | None = None,
                  secrets_volume: str | None = None, keys: BackendKeys | None = None) -> dict[str, Any]:
    """The Docker SDK's containers.create() arguments for one replica: exactly what gpufleet asks the engine
    for (the Docker API proxy admits this shape and nothing wider). Pure."""
    from docker.types import DeviceRequest, Mount

    labels = {
        f"{L}owner": project,
        f"{L}replica": rid,
        f"{L}pool": spec.pool,
        f"{L}model": spec.model,
        f"{L}gpus": ",".join(spec.gpus),
        f"{L}config-hash": spec.config_hash,
        f"{L}created-at": f"{time.time():.3f}",
        # the engine's grace between its stop signal and SIGKILL (the SDK's create takes no StopTimeout)
        f"{L}stop-grace": str(max(1, round(spec.stop_grace_s))),
        # listed by `docker compose ps`, owned by no declared service
        "com.docker.compose.project": project,
        "com.docker.compose.service": f"replica-{spec.pool}",
        "com.docker.compose.oneoff": "False",
        # compose lists only containers that carry a config hash
        "com.docker.compose.config-hash": spec.config_hash,
    }
    argv = engine_argv(spec, keys, model=spec.model, port=REPLICA_PORT, host="0.0.0.0", replica_id=rid)
    if argv and "python" in argv[0].rsplit("/", 1)[-1] and spec.image is None:
        argv[0] = "python"  # the stack image's interpreter, not the path the autoscaler runs from
    secrets_dir = f"{SECRETS_MOUNT}/{spec.pool}"
    # the pool's key in the environment: `docker inspect` shows it, and only the autoscaler may inspect (the
    # proxy's allow-list); not in the secrets volume, which every replica mounts whole
    environment = {**(env or {}), **replica_env(spec, secrets_dir, keys), "GPUFLEET_REPLICA_ID": rid}
    if spec.user == REPLICA_USER:
        environment.setdefault("HOME", "/tmp")  # nobody has no home, and engines keep caches there
    kwargs: dict[str, Any] = {}
    real = [g for g in spec.gpus if not g.startswith("vslot")]
    if real and gpus_visible:
        # exactly these GPUs, and only the "gpu" capability (compute + utility); CUDA numbers them in the
        # placement's order (a tensor-parallel rank 0 on the first), not the bus order
        kwargs["device_requests"] = [DeviceRequest(driver="nvidia", device_ids=list(real), capabilities=[["gpu"]])]
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(real)
    # the stack's own named volumes (compose names them <project>_<name>); the proxy admits no other
    mounts = [Mount(target=path, source=f"{project}_{vol}", type="volume")
              for vol, path in sorted(spec.volumes.items())]
    if spec.secret_files and secrets_volume:
        mounts.append(Mount(target=SECRETS_MOUNT, source=secrets_volume, type="volume", read_only=True))
    if mounts:
        kwargs["mounts"] = mounts
    if spec.cpus:
        kwargs["cpuset_cpus"] = ",".join(str(c) for c in spec.cpus)
    if spec.memory_limit:
        kwargs["mem_limit"] = spec.memory_limit
    if spec.pids_limit:
        kwargs["pids_limit"] = spec.pids_limit
    if spec.shm_size:
        kwargs["shm_size"] = spec.shm_size
    if spec.ipc:
        kwargs["ipc_mode"] = spec.ipc
    if spec.user:
        kwargs["user"] = spec.user
    return dict(
        image=spec.image or default_image,
        # the whole argv: the image's ENTRYPOINT is replaced, never prepended (vLLM's changed between releases)
        entrypoint=argv[:1],
        command=argv[1:],
        name=container_name(project, spec.pool, rid, "starting", spec.target_role),
        labels=labels,
        environment=environment,
        network=network,
        detach=True,
        restart_policy={"Name": "no"},
        stop_signal=spec.stop_signal,
        # least privilege: no capabilities, nothing gained by exec'ing setuid binaries, a root file system it
        # cannot change where the engine allows (/tmp, Docker's /dev/shm and the volumes are where it writes)
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        read_only=spec.read_only_root,
        tmpfs={"/tmp": "rw,nosuid,nodev,size=1g"},
        **kwargs,
    )


class DockerRuntime:
    name = "docker"

    def __init__(self, client: Any, project: str, network: str, image: str, gpus_visible: bool = False,
                 env: dict[str, str] | None = None, secrets_dir: Path | None = None,
                 secrets_volume: str | None = None, keys: BackendKeys | None = None) -> None:
        self.client = client
        self.keys = keys  # the keys replicas demand (None: they answer keyless)
        self.project = project
        self.network = network
        self.image = image
        self.gpus_visible = gpus_visible  # NVIDIA runtime present: pin by DeviceRequest
        self.env = env or {}
        # the replicas' secrets volume: where the autoscaler writes pools' secret files, and its Docker name
        self.secrets_dir = secrets_dir
        self.secrets_volume = secrets_volume
        # When each replica got its role. Not in Docker (labels are immutable): a restarted
        # autoscaler starts the clock at adoption, so a drain in progress waits its settle time again.
        self._since: dict[str, float] = {}

    def _mine(self) -> list[Any]:
        # docker-py lists the ids, then inspects each: a container removed in between (a replica stopping) is
        # left out, not a NotFound that fails the whole list, and with it the tick
        mine: list[Any] = self.client.containers.list(all=True, filters={"label": [f"{L}owner={self.project}"]},
                                                      ignore_removed=True)
        return mine

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
        found = self.client.containers.list(all=True, filters={"label": [f"{L}replica={rid}"]}, ignore_removed=True)
        if not found:
            raise KeyError(rid)
        return found[0]

    def create(self, spec: ReplicaSpec) -> Replica:
        c = self.create_container(spec)
        try:
            c.start()
        except Exception:
            # a start the engine refused (an image it cannot run, a GPU driver it lacks): no stopped
            # container left holding the GPUs' label for the next tick to count
            with contextlib.suppress(Exception):
                c.remove(force=True)
            raise
        c.reload()
        r = self._to_replica(c)
        assert r is not None
        return r

    def create_container(self, spec: ReplicaSpec) -> Any:
        """The container, created and not started: what the Docker API proxy is asked to admit."""
        rid = f"r-{spec.pool}-{uuid.uuid4().hex[:8]}"
        if spec.secret_files:
            self.write_secrets(spec)
        return self.client.containers.create(**create_kwargs(
            spec, rid, project=self.project, network=self.network, default_image=self.image,
            gpus_visible=self.gpus_visible, env=self.env, secrets_volume=self.secrets_volume, keys=self.keys))

    def write_secrets(self, spec: ReplicaSpec) -> None:
        """The pool's secret files into the volume its replicas mount read-only (the files, not env vars:
        `docker inspect` shows a container's environment to anyone who may inspect it)."""
        if self.secrets_dir is None:
            raise RuntimeError(f"pool {spec.pool} has secret_files but the autoscaler has no secrets volume "
                               "(GPUFLEET_REPLICA_SECRETS_DIR)")
        d = self.secrets_dir / spec.pool
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
        for name, src in spec.secret_files.items():
            data = Path(src).read_bytes()
            tmp = d / f".{name}.tmp"
            tmp.write_bytes(data)
            # readable by the engine's user (root without capabilities reads no file it does not own
            # unless others may); only replicas and the autoscaler mount this volume
            os.chmod(tmp, 0o444)
            os.replace(tmp, d / name)

    def set_role(self, replica_id: str, role: Role, target_role: Role | None = None,
                 claimed_for: str | None = None) -> None:
        c = self._find(replica_id)
        current = parse_role(c.name)
        target = target_role or (current[1] if current else role)
        if role != "starting":
            target = role
        c.rename(container_name(self.project, "", replica_id, role, target, claimed_for))
        self._since[f"{replica_id}:{role}"] = time.time()

    def remove(self, replica_id: str, grace_s: float | None = None) -> None:
        """Stop (the engine's stop signal, then its grace from the label set at create, or grace_s) and remove."""
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
        if grace_s is None:
            try:
                grace_s = float(c.labels.get(f"{L}stop-grace", "10"))
            except ValueError:
                grace_s = 10.0
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

    def __init__(self, client: Any, project: str, service: str = "gateway", secret: str | None = None) -> None:
        self.client = client
        self.project = project
        self.service = service
        self.secret = secret

    def _container(self) -> Any:
        # sparse: the SDK would otherwise inspect it, and the proxy lets the autoscaler signal the gateway, not
        # read its configuration
        found = self.client.containers.list(sparse=True, filters={"label": [
            f"com.docker.compose.project={self.project}", f"com.docker.compose.service={self.service}"]})
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
            r = c.get(f"http://{self.service}:{port}/v1/models", headers=probe_headers(self.secret))
            generation: str | None = r.headers.get("x-gpufleet-generation")
            return generation

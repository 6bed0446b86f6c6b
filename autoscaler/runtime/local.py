"""Replicas as child processes of this host, state as one JSON file each.

For hosts where Docker is not allowed and for fast integration tests. A
replica's file is written before its process starts and removed after it has
stopped, so a restarted autoscaler adopts what runs and cleans up what died.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from autoscaler.backend_auth import BackendKeys
from autoscaler.procs import pid_alive
from autoscaler.runtime.base import Replica, ReplicaSpec, Role, engine_argv, replica_env


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _pid_running(pid: int, replica_id: str) -> bool:
    """Alive and really ours: pids are reused, zombies are dead."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return replica_id.encode() in f.read()
    except OSError:
        return False


def cuda_visible_devices(gpus: tuple[str, ...]) -> str | None:
    """UUIDs pass through; GPU<i> from a topology file becomes <i>; virtual slots set nothing."""
    if not gpus or any(g.startswith("vslot") for g in gpus):
        return None
    return ",".join(g[3:] if g.startswith("GPU") and g[3:].isdigit() else g for g in gpus)


class _Record(BaseModel):
    """One replica's state file: what a restarted autoscaler reads back (unknown fields ignored)."""

    model_config = ConfigDict(extra="ignore")
    id: str
    pool: str
    model: str
    role: Role
    target_role: Role
    host: str
    port: int
    gpus: tuple[str, ...] = ()
    config_hash: str
    created_at: float
    role_since: float | None = None
    pid: int | None = None  # None: written before the process started
    stopping: bool = False
    claimed_for: str | None = None
    spec: dict[str, Any] = {}


class LocalRuntime:
    name = "local"

    def __init__(self, state_dir: Path, host: str = "127.0.0.1", keys: BackendKeys | None = None) -> None:
        self.state_dir = state_dir
        self.keys = keys  # the keys replicas demand (None: they answer keyless)
        self.host = host
        state_dir.mkdir(parents=True, exist_ok=True)
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def _path(self, rid: str) -> Path:
        return self.state_dir / f"{rid}.json"

    def _read(self, rid: str) -> _Record:
        return _Record.model_validate_json(self._path(rid).read_text())

    def _write(self, rec: _Record) -> None:
        tmp = self.state_dir / f".{rec.id}.tmp"
        tmp.write_text(rec.model_dump_json())
        os.replace(tmp, self._path(rec.id))

    def _to_replica(self, d: _Record) -> Replica:
        child = self._children.get(d.id)
        alive = child.poll() is None if child is not None else d.pid is not None and _pid_running(d.pid, d.id)
        return Replica(
            id=d.id, pool=d.pool, model=d.model, role=d.role, target_role=d.target_role,
            url=f"http://{d.host}:{d.port}", upstream=f"{d.host}:{d.port}", gpus=d.gpus,
            config_hash=d.config_hash, created_at=d.created_at, alive=alive,
            role_since=d.role_since if d.role_since is not None else d.created_at,
            stopping=d.stopping, claimed_for=d.claimed_for or None, labels={"pid": str(d.pid)},
        )

    def list(self) -> list[Replica]:
        out = []
        for p in sorted(self.state_dir.glob("r-*.json")):
            try:
                out.append(self._to_replica(_Record.model_validate_json(p.read_text())))
            except (OSError, ValueError):
                continue  # a half-written file from a crash: the tmp name protects against this
        return out

    def create(self, spec: ReplicaSpec) -> Replica:
        rid = f"r-{spec.pool}-{uuid.uuid4().hex[:8]}"
        port = _free_port(self.host)
        now = time.time()
        data = _Record(id=rid, pool=spec.pool, model=spec.model, role="starting", target_role=spec.target_role,
                       host=self.host, port=port, gpus=spec.gpus, config_hash=spec.config_hash, created_at=now,
                       role_since=now, spec=asdict(spec))
        self._write(data)  # state first: a crash from here on leaves a record to clean up
        argv = engine_argv(spec, self.keys, model=spec.model, port=port, host=self.host, replica_id=rid)
        # the key in the environment (readable by this user only), not in argv (`ps` shows argv to everyone)
        env = dict(os.environ, **replica_env(spec, self.secrets_dir(spec), self.keys), GPUFLEET_REPLICA_ID=rid)
        visible = cuda_visible_devices(spec.gpus)
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        log = open(self.state_dir / f"{rid}.log", "ab")  # noqa: SIM115 (lives with the process)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        log.close()
        if spec.cpus:
            # cores not on this host: placement is advice, not a failure
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, set(spec.cpus))
        self._children[rid] = proc
        data.pid = proc.pid
        self._write(data)
        return self._to_replica(data)

    def secrets_dir(self, spec: ReplicaSpec) -> str:
        """On this host the engine reads the secret files where the autoscaler does: a folder of links to them
        per pool, so that "{secrets}/<name>" means the same as in Docker."""
        d = self.state_dir / "secrets" / spec.pool
        if spec.secret_files:
            d.mkdir(parents=True, exist_ok=True)
            for name, path in spec.secret_files.items():
                link = d / name
                if not (link.is_symlink() and os.readlink(link) == path):
                    tmp = d / f".{name}.tmp"
                    tmp.unlink(missing_ok=True)
                    tmp.symlink_to(path)
                    os.replace(tmp, link)
        return str(d)

    def set_role(self, replica_id: str, role: Role, target_role: Role | None = None,
                 claimed_for: str | None = None) -> None:
        d = self._read(replica_id)
        d.role = role
        d.claimed_for = claimed_for if role == "draining" else None
        d.role_since = time.time()
        if target_role is not None:
            d.target_role = target_role
        self._write(d)

    def remove(self, replica_id: str, grace_s: float | None = None) -> None:
        """The engine's stop signal, its grace period (the spec's, default 5 s here), then SIGKILL."""
        try:
            d = self._read(replica_id)
        except FileNotFoundError:
            return
        sig = getattr(signal, str(d.spec.get("stop_signal") or "SIGTERM"), signal.SIGTERM)
        if grace_s is None:
            grace_s = float(d.spec.get("stop_grace_s") or 5.0)
        if not d.stopping:
            d.stopping = True
            self._write(d)  # before the first signal: a restarted autoscaler finishes the job
        pid = d.pid
        child = self._children.pop(replica_id, None)
        if isinstance(pid, int) and (child is not None or _pid_running(pid, replica_id)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                if child is not None and child.poll() is not None:
                    break
                if child is None and not _pid_running(pid, replica_id):
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            if child is not None:
                child.wait(5)
        self._path(replica_id).unlink(missing_ok=True)

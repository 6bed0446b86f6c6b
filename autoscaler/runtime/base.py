"""The runtime contract. Roles and GPU assignments live in the runtime's own
state (Docker labels, the local state dir) so that a restarted autoscaler finds
them again; nothing here is only in memory."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from autoscaler.backend_auth import BackendKeys

Role = Literal["starting", "warm", "active", "draining"]
ROLES: tuple[Role, ...] = ("starting", "warm", "active", "draining")


_PLACEHOLDER = re.compile(r"\{(model|port|host|replica_id)\}")


def fill_argv(argv: tuple[str, ...], **values: object) -> list[str]:
    """Put {model}, {port}, {host}, {replica_id} in, in one pass: any other brace, and any brace inside a
    value (a model called "a{b}"), stays as written. (str.format would raise on both.)"""
    return [_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), a)
            for a in argv]


SECRETS_PLACEHOLDER = "{secrets}"


@dataclass(frozen=True)
class ReplicaSpec:
    pool: str
    model: str
    argv: tuple[str, ...]  # with {model}, {port}, {host}, {replica_id} for the runtime to fill (fill_argv)
    config_hash: str
    target_role: Role  # what it becomes once ready: active or warm
    gpus: tuple[str, ...] = ()  # in placement order: CUDA numbers them so
    cpus: tuple[int, ...] = ()  # NUMA-local cores for the GPUs, empty = no pinning
    image: str | None = None
    memory_limit: str | None = None  # docker runtime: the container's memory limit ("32g")
    pids_limit: int | None = None
    # the engine's environment; "{secrets}" in a value is the folder where the runtime put secret_files
    env: Mapping[str, str] = field(default_factory=dict)
    secret_files: Mapping[str, str] = field(default_factory=dict)  # name -> a file the autoscaler reads
    volumes: Mapping[str, str] = field(default_factory=dict)  # docker: the stack's named volume -> path
    shm_size: str | None = None  # docker: /dev/shm
    ipc: str | None = None  # docker: private | shareable
    stop_signal: str = "SIGTERM"
    stop_grace_s: float = 10.0  # the stop signal, then this long, then SIGKILL
    user: str | None = None  # docker: None = the image's user
    read_only_root: bool = True  # docker
    # how the engine takes the key it demands ("{api_key}", "{scrape_key}"): given only when the runtime has
    # BackendKeys (a stack), so a replica started without them (tests, benchmarks) answers keyless
    key_env: Mapping[str, str] = field(default_factory=dict)
    key_args: tuple[str, ...] = ()


def replica_env(spec: ReplicaSpec, secrets_dir: str, keys: BackendKeys | None = None) -> dict[str, str]:
    """The engine's environment with "{secrets}" made the folder the runtime put the secret files in, and the
    pool's backend key where the engine reads it."""
    env = {k: v.replace(SECRETS_PLACEHOLDER, secrets_dir) for k, v in spec.env.items()}
    if keys is not None:
        env.update({k: keys.fill(spec.pool, v) for k, v in spec.key_env.items()})
    return env


def engine_argv(spec: ReplicaSpec, keys: BackendKeys | None = None, **values: object) -> list[str]:
    """The argv to run: placeholders filled (fill_argv), the engine's key flags added when the stack has keys."""
    argv = fill_argv(spec.argv, **values)
    if keys is not None:
        argv += [keys.fill(spec.pool, a) for a in spec.key_args]
    return argv


@dataclass(frozen=True)
class Replica:
    id: str
    pool: str
    model: str
    role: Role
    target_role: Role
    url: str  # base URL the autoscaler and nginx reach it at
    upstream: str  # host:port for nginx
    gpus: tuple[str, ...]
    config_hash: str
    created_at: float  # wall clock
    alive: bool  # the process/container is running
    role_since: float = 0.0  # wall clock of the last role change
    # a removal has begun (recorded before the first signal): a restarted autoscaler finishes it and
    # counts its GPUs as held until the replica is gone
    stopping: bool = False
    # draining to give its GPUs to this pool (a reclaim): kept with the role, so that a restarted
    # autoscaler stops it once drained (not keeps it warm) and the GPUs still go where they were promised
    claimed_for: str | None = None
    labels: dict[str, str] = field(default_factory=dict, compare=False)


class Runtime(Protocol):
    name: str

    def list(self) -> list[Replica]: ...

    def create(self, spec: ReplicaSpec) -> Replica: ...

    def set_role(self, replica_id: str, role: Role, target_role: Role | None = None,
                 claimed_for: str | None = None) -> None:
        """claimed_for: with role draining, the pool its GPUs are promised to (kept until it is gone)."""
        ...

    def remove(self, replica_id: str) -> None:
        """Mark the replica stopping, stop it (gracefully, then force) and forget it. Idempotent."""
        ...

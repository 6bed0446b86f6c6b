"""The runtime contract. Roles and GPU assignments live in the runtime's own
state (Docker labels, the local state dir) so that a restarted autoscaler finds
them again; nothing here is only in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["starting", "warm", "active", "draining"]
ROLES: tuple[Role, ...] = ("starting", "warm", "active", "draining")


@dataclass(frozen=True)
class ReplicaSpec:
    pool: str
    model: str
    argv: tuple[str, ...]  # with {port} and {host} placeholders for the runtime to fill
    config_hash: str
    target_role: Role  # what it becomes once ready: active or warm
    gpus: tuple[str, ...] = ()
    cpus: tuple[int, ...] = ()  # NUMA-local cores for the GPUs, empty = no pinning
    image: str | None = None


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
    labels: dict[str, str] = field(default_factory=dict, compare=False)


class Runtime(Protocol):
    name: str

    def list(self) -> list[Replica]: ...

    def create(self, spec: ReplicaSpec) -> Replica: ...

    def set_role(self, replica_id: str, role: Role, target_role: Role | None = None) -> None: ...

    def remove(self, replica_id: str) -> None:
        """Stop (gracefully, then force) and forget the replica."""
        ...

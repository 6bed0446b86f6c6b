"""A replica's life as pure functions: how one is launched (its engine's spec) and placed (GPUs, NUMA-local
cores), the fleet's multi-GPU sizes kept placeable, and the crash backoff a failed start or a crash puts its
pool into."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from autoscaler.config import FleetConfig, PoolConfig
from autoscaler.engines import resolve
from autoscaler.gpus.placement import choose_gpus
from autoscaler.gpus.slots import Placement
from autoscaler.gpus.topology import LinkKind
from autoscaler.loop.snapshot import GpuView, PoolState
from autoscaler.runtime.base import ReplicaSpec, Role


def note_crash(p: PoolConfig, st: PoolState, now: float, why: str) -> PoolState:
    """One more failed start or crash. A first one is replaced at once; after the n-th in a row the next
    cold start waits base·2^(n-2), capped (like Kubernetes' CrashLoopBackOff). A pool that has not crashed
    for twice the cap starts counting again from one."""
    recent = st.last_crash_at is not None and now - st.last_crash_at < 2 * p.start_backoff_max_s
    n = st.crashes + 1 if recent else 1
    delay = 0.0 if n == 1 else min(p.start_backoff_s * 2 ** min(n - 2, 30), p.start_backoff_max_s)
    return replace(st, crashes=n, last_crash_at=now, backoff_until=now + delay, backoff_reason=why)


def replica_spec(p: PoolConfig, role: Role, gpus: tuple[str, ...], cpus: tuple[int, ...] = ()) -> ReplicaSpec:
    """What the runtime starts for one replica of p: its engine (preset + overrides) on these GPUs."""
    e = resolve(p)
    return ReplicaSpec(
        pool=p.name, model=p.model, argv=e.argv, config_hash=p.config_hash(), target_role=role, gpus=gpus,
        cpus=cpus, image=e.image, memory_limit=p.limits.memory, pids_limit=p.limits.pids, env=dict(e.env),
        secret_files={k: str(v) for k, v in p.secret_files.items()}, volumes=dict(e.volumes), shm_size=e.shm_size,
        ipc=p.ipc, stop_signal=e.stop_signal, stop_grace_s=e.stop_grace_s, user=e.user,
        read_only_root=e.read_only_root, key_env=dict(e.key_env), key_args=e.key_args)


def place_replica(gpus: GpuView, p: PoolConfig, used: set[str],
                  future: Sequence[int] | None = None) -> Placement | None:
    """GPUs (and NUMA-local cores) for one more replica of pool p, none of them used or cordoned.
    future: the multi-GPU sizes the fleet's pools ask for, kept placeable (fleet_sizes)."""
    return choose_gpus(gpus.topo, used | gpus.cordoned, p.gpus_per_replica, model=p.gpu_model,
                       min_memory_mb=p.gpu_min_memory_mb,
                       min_link=LinkKind[p.gpu_min_link] if p.gpu_min_link else None, host_cpus=gpus.host_cpus,
                       future=future)


def fleet_sizes(cfg: FleetConfig) -> tuple[int, ...]:
    """The multi-GPU replica sizes the fleet's pools ask for, smallest first: what packing keeps placeable,
    across pools (a 1-GPU replica of one pool leaves the NVLink pair another pool's 2-GPU replica needs)."""
    return tuple(sorted({p.gpus_per_replica for p in cfg.pools if p.gpus_per_replica > 1}))

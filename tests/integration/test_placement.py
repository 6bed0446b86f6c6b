"""GPU placement in a running stack, from a real topology dump (this host has no GPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import sim_pool, wait_for

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "topology"


def _env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)


def test_replicas_get_disjoint_best_linked_gpus_and_free_them(local_stack):
    topo = FIX / "4xa100-pcie-nv12-bridge-pair-2socket-mlx.txt"
    stack = local_stack({"gpus": {"source": "topology", "topology_file": str(topo)},
                         "pools": [sim_pool(gpus_per_replica=2, min_replicas=2, max_replicas=2,
                                            warm_pool={"min": 0, "max": 0})]}, active=2)
    reps = stack.replicas(role="active")
    sets = sorted(tuple(r["gpus"]) for r in reps)
    assert sets == [("GPU0", "GPU1"), ("GPU2", "GPU3")], "NV12 pair for one, the NODE pair for the other"
    for r in reps:
        env = _env(stack.replica_pid(r["id"]))
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(g[3:] for g in r["gpus"])
    gpus = stack.status()["gpus"]
    assert {d["id"]: d["held_by"] for d in gpus["devices"]} == {g: r["id"] for r in reps for g in r["gpus"]}

    # `gpufleet gpus` reads the live fleet
    out = subprocess.run([sys.executable, "-m", "autoscaler.cli", "gpus", "--admin", stack.admin,
                          "--token", stack.admin_token],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and all(r["id"] in out.stdout for r in reps), out.stderr

    # a replica that dies frees its GPUs; the replacement gets the same best pair back
    nv = next(r for r in reps if r["gpus"] == ["GPU0", "GPU1"])
    os.kill(stack.replica_pid(nv["id"]), signal.SIGKILL)
    wait_for(lambda: nv["id"] not in {r["id"] for r in stack.replicas()}, 15, "dead replica removed")
    again = stack.wait_active(2, timeout=30)
    assert sorted(tuple(r["gpus"]) for r in again) == sets
    held = [g for r in stack.replicas() for g in r["gpus"]]
    assert len(held) == len(set(held)), f"a GPU assigned twice: {held}"

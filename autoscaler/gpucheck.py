"""`gpufleet gpu-check` (`make gpu-check`): what this machine's GPUs look like to gpufleet, end to end.

On a host with an NVIDIA GPU: what NVML sees (GPUs, links, NUMA), where replicas of 1, 2, 4, 8 GPUs would be
placed on that real topology, the DCGM-named readings and the health check, and, if an engine is installed,
one real replica started on the placed GPU through the local runtime, probed by its own readiness contract
and asked one chat completion. Exit 0: all of it worked; 3: no GPU (NVML says why); 1: a step failed.
Nothing in CI depends on it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

Out = Callable[[str], None]


def check(nvml: Any | None = None, out: Out = print, engine: str = "auto", model_path: str | None = None,
          executable: str | None = None, timeout_s: float = 600.0) -> int:
    from autoscaler.gpus.nvml import failing_gpus, load_pynvml, read_topology
    from autoscaler.gpus.placement import choose_gpus
    from autoscaler.gpus.telemetry import read_nvml
    from autoscaler.gpus.topology import format_ranges, render_matrix

    try:
        nvml = nvml or load_pynvml()
        topo = read_topology(nvml)
    except Exception as e:
        out(f"no NVIDIA GPU usable here: NVML: {type(e).__name__}: {e}")
        return 3
    if not topo.n:
        out("no NVIDIA GPU usable here: NVML sees none")
        return 3
    out(f"NVML sees {topo.n} GPU(s): {', '.join(sorted({g.name for g in topo.gpus}))}")
    out(render_matrix(topo, {}))
    cores = frozenset(os.sched_getaffinity(0))
    first = None
    for k in (1, 2, 4, 8):
        if k > topo.n:
            break
        p = choose_gpus(topo, set(), k, host_cpus=cores)
        if p is None:
            out(f"a {k}-GPU replica: no placement")
            continue
        first = first or p
        out(f"a {k}-GPU replica would get {', '.join(p.gpus)} ({p.note}; cores {format_ranges(p.cpus) or '-'})")
    ok = True
    try:
        for r in read_nvml(nvml, topo):
            out(f"GPU {r.index} {r.uuid}: util {r.util_pct}% fb used {r.fb_used_mib} MiB free {r.fb_free_mib} MiB "
                f"temp {r.temp_c} C power {r.power_w} W  (DCGM_FI_DEV_GPU_UTIL, _FB_USED, _FB_FREE, _GPU_TEMP, "
                "_POWER_USAGE)")
        bad = failing_gpus(nvml, topo)
        out("health: every GPU answers NVML" if not bad else f"health: failing {bad}")
        ok = not bad
    except Exception as e:
        out(f"telemetry failed: {type(e).__name__}: {e}")
        ok = False
    if first is not None:
        ok = _one_replica(first.gpus, out, engine, model_path, executable, timeout_s) and ok
    return 0 if ok else 1


def _one_replica(gpus: tuple[str, ...], out: Out, engine: str, model_path: str | None, executable: str | None,
                 timeout_s: float) -> bool:
    """Start one replica of an installed engine on `gpus` through the local runtime; True if it served."""
    from autoscaler.config import parse_config
    from autoscaler.loop.lifecycle import replica_spec
    from autoscaler.runtime.local import LocalRuntime

    root = Path(__file__).resolve().parent.parent
    llama = executable or str(root / "build/llama-server/llama-server")
    if engine == "auto":
        engine = "vllm" if shutil.which("vllm") and model_path else "llamacpp" if Path(llama).exists() else "none"
    if engine == "none":
        out("no engine to start: install vLLM (and pass --model-path), or `make llama-server`")
        return True
    pool: dict[str, Any] = {"name": "check", "model": "gpu-check", "engine": engine, "gpus_per_replica": len(gpus)}
    if engine == "llamacpp":
        model = model_path or str(root / "build/models/tiny-llama.gguf")
        pool |= {"executable": llama, "model_path": model, "args": ["--n-gpu-layers", "999"]}
    else:
        pool |= {"model_path": model_path, **({"executable": executable} if executable else {})}
    p = parse_config({"pools": [pool], "gpus": {"source": "nvml"}}).pools[0]
    rt = LocalRuntime(Path(tempfile.mkdtemp(prefix="gpufleet-gpu-check-")))
    rep = rt.create(replica_spec(p, "active", gpus))
    out(f"started {engine} replica {rep.id} on {', '.join(gpus)} (CUDA_VISIBLE_DEVICES), pid {rep.labels['pid']}")
    try:
        eng = p.engine_spec
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if not rt.list()[0].alive:
                out(f"the replica exited; its log: {rt.state_dir / (rep.id + '.log')}")
                return False
            try:
                if httpx.get(f"{rep.url}{eng.ready_path}", timeout=eng.ready_timeout_s).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            out(f"not ready within {timeout_s:g} s")
            return False
        out(f"ready after {time.monotonic() - t0:.1f} s ({eng.ready_path} answered 200)")
        t1 = time.monotonic()
        r = httpx.post(f"{rep.url}/v1/chat/completions", timeout=120, json={
            "model": "gpu-check", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16})
        out(f"chat completion: {r.status_code} in {time.monotonic() - t1:.2f} s: {r.text[:200]}")
        return r.status_code == 200
    finally:
        rt.remove(rep.id)

"""Several pools on one host's GPUs, on the local stack with real replicas and the openai client:
a burst on a high-priority pool takes GPUs from a low-priority one by drain (never below its minimum,
no failed request in either), and a replica sitting in the only NVLink pair moves so that a 2-GPU
replica fits."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import httpx
import openai

from autoscaler.config import load_config
from autoscaler.loop.lifecycle import replica_spec
from autoscaler.runtime.local import LocalRuntime
from tests.helpers import Clients, LocalStack, sim_pool, wait_for

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "topology"
QUICK = {"profile": "tiny", "load_time_s": 1.0, "max_num_seqs": 4, "step_base_s": 0.05, "step_per_seq_s": 0.0}


class Watch:
    """/status every 0.25 s in the background: the fleet over time, for properties that must hold throughout."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.seen: list[dict] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(10)

    def _run(self) -> None:
        end = time.monotonic() + 300
        while not self._stop.is_set() and time.monotonic() < end:
            with contextlib.suppress(httpx.HTTPError, OSError, ValueError):
                self.seen.append(self.stack.status())
            time.sleep(0.25)

    def serving(self, pool: str) -> list[int]:
        return [sum(1 for r in st["pools"][pool]["replicas"] if r["role"] == "active" and r["ready"])
                for st in self.seen]


def test_a_burst_on_the_high_priority_pool_reclaims_gpus_by_drain_without_a_failed_request(local_stack):
    low = sim_pool(name="low", model="low-model", priority=0, gpus_per_replica=1, min_replicas=1, max_replicas=2,
                   warm_pool={"min": 0, "max": 0}, sim=QUICK, targets={"concurrency": 2},
                   behavior={"scale_down": {"stabilization_s": 300}})
    high = sim_pool(name="high", model="high-model", priority=10, gpus_per_replica=1, min_replicas=1,
                    max_replicas=3, warm_pool={"min": 0, "max": 0}, sim=QUICK, targets={"concurrency": 2})
    stack = local_stack({"gpus": {"source": "none", "virtual_slots": 3}, "pools": [low, high]}, start=False)
    stack.start(active=0)
    wait_for(lambda: all(stack.replicas(p, role="active", ready=True) for p in ("low", "high"))
             and stack.gateway_serves(), 45, "both pools serving")
    with Watch(stack) as watch, Clients(stack.url, 4, "low-model") as low_load:
        # the low pool takes the last free GPU
        wait_for(lambda: len(stack.replicas("low", role="active", ready=True)) == 2, 30, "low at 2 replicas")
        with Clients(stack.url, 6, "high-model") as high_load:
            ev = wait_for(lambda: [e for e in stack.events("reclaim") if e["pool"] == "high"], 30, "a reclaim")
            wait_for(lambda: len(stack.replicas("high", role="active", ready=True)) == 2, 30, "high at 2 replicas")
            pools = stack.status()["pools"]
            # high wants 3: one more than any GPU it may take; low wants 2 and has its minimum
            wait_for(lambda: stack.pool("high")["unmet"] >= 1 and stack.pool("low")["unmet"] >= 1, 15,
                     "unmet demand in /status")
            metrics = stack.admin_get("/metrics").text
            n = len(high_load.answers)  # the high pool keeps being served at its new size
            wait_for(lambda: len(high_load.answers) >= n + 6, 30, "six more answers from the high pool")
    assert ev[0]["from_pool"] == "low" and ev[0]["for_pool"] == "high" and ev[0]["how"] == "drain", ev
    assert 'gpufleet_pool_unmet_replicas{pool="high"}' in metrics
    assert 'gpufleet_events_total{kind="reclaim",pool="high"}' in metrics
    assert min(watch.serving("low")) >= 1, "the low pool never went below its minimum"
    assert pools["low"]["priority"] == 0 and pools["high"]["priority"] == 10
    drained = [e for e in stack.events() if e["kind"] == "drain" and e["pool"] == "low"]
    assert drained and "reclaimed" in drained[0]["reason"]
    assert not [e for e in stack.events() if e["kind"] == "stop" and e["pool"] == "low"
                and e.get("role") == "active"], "a serving replica is drained, never stopped"
    for load in (low_load, high_load):
        assert len(load.answers) > 10 and not [a.error for a in load.answers if a.error], \
            [a.error for a in load.answers if a.error][:3]


def test_a_replica_in_the_only_nvlink_pair_moves_so_a_2_gpu_replica_fits(local_stack, tmp_path):
    topo = FIX / "4xa100-pcie-nv12-bridge-pair-2socket-mlx.txt"  # only GPU0-GPU1 is NVLink
    small = sim_pool(name="small", model="small-chat", gpus_per_replica=1, min_replicas=1, max_replicas=2,
                     warm_pool={"min": 0, "max": 0}, sim=QUICK)
    large = sim_pool(name="large", model="big-chat", priority=10, gpus_per_replica=2, gpu_min_link="NVLINK",
                     min_replicas=1, max_replicas=1, warm_pool={"min": 0, "max": 0}, sim=QUICK)
    stack = local_stack({"gpus": {"source": "topology", "topology_file": str(topo)}, "pools": [small, large]},
                        start=False)
    # The fleet an earlier run left (before the large pool was added): small's replica on GPU0.
    cfg = load_config(stack.config_path)
    p = cfg.pool("small")
    rt = LocalRuntime(stack.run_dir / "replicas")
    left = rt.create(replica_spec(p, "active", ("GPU0",)))
    stack.start(active=0)
    wait_for(lambda: stack.replicas("small", role="active", ready=True) and stack.gateway_serves(), 45,
             "the adopted replica serving")
    with Watch(stack) as watch, Clients(stack.url, 2, "small-chat") as load:
        mv = wait_for(lambda: [e for e in stack.events("move") if e["pool"] == "large"], 30, "a move")
        reps = wait_for(lambda: stack.replicas("large", role="active", ready=True), 45, "the 2-GPU replica")
        n = len(load.answers)  # small still answers after the move
        wait_for(lambda: len(load.answers) >= n + 2, 30, "two more answers from the small pool")
    assert mv[0]["replica"] == left.id and mv[0]["from_pool"] == "small"
    assert reps[0]["gpus"] == ["GPU0", "GPU1"]
    now_small = stack.replicas("small", role="active")
    assert now_small and all(not set(r["gpus"]) & {"GPU0", "GPU1"} for r in now_small)
    assert left.id not in {r["id"] for r in stack.replicas("small")}
    assert min(watch.serving("small")) >= 1, "small kept serving through the move"
    assert len(load.answers) > 5 and not [a.error for a in load.answers if a.error]
    c = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=30)
    assert c.chat.completions.create(model="big-chat", messages=[{"role": "user", "content": "hi"}],
                                     max_tokens=3).usage.completion_tokens == 3


def test_the_multi_model_example_starts_places_and_routes(local_stack):
    """examples/multi-model.yaml as shipped, but for the ports, no API keys and shorter model loads."""
    import yaml

    root = Path(__file__).resolve().parent.parent.parent
    cfg = yaml.safe_load((root / "examples" / "multi-model.yaml").read_text())
    cfg["gpus"]["topology_file"] = str(root / "examples" / cfg["gpus"]["topology_file"])
    for p in cfg["pools"]:
        p["sim"]["load_time_s"] = 1.0
    stack = local_stack(cfg, start=False).start(active=0)
    wait_for(lambda: stack.replicas("large", role="active", ready=True)
             and stack.replicas("small", role="active", ready=True) and stack.gateway_serves(), 45, "large, small")
    gpus = {p: [r["gpus"] for r in stack.replicas(p)] for p in ("large", "small", "batch")}
    assert gpus["large"] == [["GPU0", "GPU1"]] and gpus["small"] == [["GPU2"]] and gpus["batch"] == []
    c = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=60)
    msgs = [{"role": "user", "content": "hi"}]
    assert c.chat.completions.create(model="chat", messages=msgs, max_tokens=2).model == "gpufleet-small-chat"
    # the batch pool is at zero: the request waits in the activator while a replica starts on the last GPU
    raw = c.chat.completions.with_raw_response.create(model="chat", messages=msgs, max_tokens=2,
                                                       extra_headers={"X-Workload": "batch"})
    assert raw.parse().model == "gpufleet-embed" and "rule:batch-by-header" in raw.headers["x-gpufleet-route"]
    assert [r["gpus"] for r in stack.replicas("batch")] == [["GPU3"]]
    st = stack.status()["pools"]
    assert [st[p]["priority"] for p in ("large", "small", "batch")] == [100, 50, 0]

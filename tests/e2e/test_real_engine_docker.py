"""A real third-party engine and GPU pinning in the compose stack, on a real Docker engine.

The `llama` pool runs llama.cpp's server (gpufleet/llamacpp: the binary built from llama-cpp-python's vendored
sources, a tiny random-weight model); GPU device requests are checked on what Docker stored, sent by the
runtime's own code through the real Docker API proxy (no GPU here: the placement comes from a real
`nvidia-smi topo -m` dump through tests/fake_nvml.py, NVML's own data shapes).
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import openai

from tests.e2e.conftest import PROJECT, ComposeStack
from tests.helpers import ROOT, wait_for
from tests.integration.test_real_engine import BASE, check_burst, run_burst

LLAMA_CAPACITY = 4.0  # req/s of one llama.cpp replica at 100 tokens (2 slots, 1 thread)


def _llama(stack: ComposeStack) -> list[dict]:
    return stack.status()["pools"]["llama"]["replicas"]


def test_llama_cpp_pool_becomes_ready_scales_on_a_burst_and_drains_with_no_failure(compose_stack):
    stack = compose_stack
    wait_for(lambda: [r for r in _llama(stack) if r["role"] == "active" and r["ready"]]
             and [r for r in _llama(stack) if r["role"] == "warm" and r["ready"]], 180,
             "a serving and a warm llama.cpp replica")
    # the replica containers run llama.cpp's image and binary, with the preset's argv, as nobody
    found = json.loads(subprocess.run(
        ["docker", "inspect", *[c["ID"] for c in stack.containers("io.gpufleet.pool=llama", all_=False)]],
        capture_output=True, text=True, check=True).stdout)
    for c in found:
        assert c["Config"]["Image"] == "gpufleet/llamacpp:latest"
        assert c["Config"]["Entrypoint"] == ["/app/llama-server"] and "--metrics" in c["Config"]["Cmd"]
        assert c["Config"]["User"] == "65534:65534" and c["HostConfig"]["ReadonlyRootfs"] is True
    c = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.api_key, max_retries=0)
    r = c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert r.model == "tiny-llama" and (r.system_fingerprint or "").startswith("b"), r
    pool = stack.status()["pools"]["llama"]
    assert pool["engine"]["missing_signals"] == ["kv_cache_usage", "request_rate", "ttft_p95_s"]

    t0, results, rec = run_burst(stack, stack.url, stack.api_key, LLAMA_CAPACITY)
    wait_for(lambda: len([x for x in _llama(stack) if x["role"] == "active"]) == 1
             and not [x for x in _llama(stack) if x["role"] == "draining"], 90, "the llama pool back to one")
    ups, acts = check_burst(results, rec, t0, "llama")
    print(f"\nFIGURES docker llama.cpp: {len(results)} requests, 0 failed; scale-up "
          f"{ups[0]['t'] - t0 - BASE:+.2f}s from the burst's start; activation {acts[0]['t'] - ups[0]['t']:.3f}s after")


# Run in a container on the stack's docker-api network, where the autoscaler talks to the proxy: the 8xH100
# dump through the NVML fake, the real allocator, the runtime's own create, the real proxy and engine.
DEVICE_PROBE = textwrap.dedent(r"""
    import json, docker
    from autoscaler.config import parse_config
    from autoscaler.gpus.nvml import read_topology
    from autoscaler.gpus.placement import choose_gpus
    from autoscaler.gpus.topology import load_topology_file
    from autoscaler.loop.lifecycle import replica_spec
    from autoscaler.runtime.docker import DockerRuntime
    from tests.fake_nvml import FakeNvml
    topo = read_topology(FakeNvml(load_topology_file("tests/fixtures/topology/hgx-8xh100-sxm-nv18-aws-p5.txt")))
    cfg = parse_config({"pools": [{"name": "tp2", "model": "tp2-chat", "gpus_per_replica": 2}]})
    placed = choose_gpus(topo, set(), 2)
    client = docker.DockerClient(base_url="tcp://docker-proxy:2375")
    rt = DockerRuntime(client, "%(project)s", "%(project)s_backend", "gpufleet/app:latest", gpus_visible=True)
    out = {"placed": list(placed.gpus)}
    c = rt.create_container(replica_spec(cfg.pools[0], "active", placed.gpus))
    out["created"] = c.id
    for what, gpus in (("three", tuple(g.id for g in topo.gpus[:3])), ("not-a-uuid", ("0", "1"))):
        try:
            rt.create_container(replica_spec(cfg.pools[0], "active", gpus))
            out[what] = "created"
        except docker.errors.APIError as e:
            out[what] = e.status_code
    api = client.api
    spec = replica_spec(cfg.pools[0], "active", placed.gpus)
    from autoscaler.runtime.docker import create_kwargs
    kw = create_kwargs(spec, "r-tp2-ffffffff", project="%(project)s", network="%(project)s_backend",
                       default_image="gpufleet/app:latest", gpus_visible=True)
    kw["device_requests"] = [docker.types.DeviceRequest(driver="nvidia", count=-1, capabilities=[["gpu"]])]
    try:
        client.containers.create(**kw)
        out["all-gpus"] = "created"
    except docker.errors.APIError as e:
        out["all-gpus"] = e.status_code
    print(json.dumps(out))
""")


def test_a_two_gpu_placement_is_exactly_the_device_request_docker_stores_and_nothing_wider(compose_stack):
    assert compose_stack.status()["pools"]["tp2"]["engine"]["name"] == "sim"  # the fleet the proxy reads
    # the autoscaler, paused: the container the probe makes is a tp2 replica it never asked for, and it would
    # remove it (rightly) before Docker's record of it is read
    autoscaler = f"{PROJECT}-autoscaler-1"
    subprocess.run(["docker", "pause", autoscaler], check=True, capture_output=True)
    cid = ""
    try:
        r = subprocess.run(["docker", "run", "--rm", "--network", f"{PROJECT}_docker-api", "-v", f"{ROOT}:/src:ro",
                            "-w", "/src", "-e", "PYTHONPATH=/src", "--user", "65534:65534", "gpufleet/app:latest",
                            "python", "-c", DEVICE_PROBE % {"project": PROJECT}],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        cid = out["created"]
        stored = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True, text=True,
                                           check=True).stdout)[0]
        # the allocator chose an NVLink pair of the H100 box; Docker stored exactly those two GPUs, the "gpu"
        # capability alone, and CUDA numbers them in the placement's order
        reqs = stored["HostConfig"]["DeviceRequests"]
        assert len(out["placed"]) == 2 and all(g.startswith("GPU-") for g in out["placed"])
        assert reqs == [{"Driver": "nvidia", "Count": 0, "DeviceIDs": out["placed"], "Capabilities": [["gpu"]],
                         "Options": {}}], reqs
        assert f"CUDA_VISIBLE_DEVICES={','.join(out['placed'])}" in stored["Config"]["Env"]
        assert stored["HostConfig"]["CapDrop"] == ["ALL"] and not stored["HostConfig"]["Privileged"]
    finally:
        if cid:
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
        subprocess.run(["docker", "unpause", autoscaler], check=True, capture_output=True)
    # wider than the fleet allows (its largest replica holds 2 GPUs; GPUs are named, never counted): refused
    assert out["three"] == 403 and out["not-a-uuid"] == 403 and out["all-gpus"] == 403, out


def test_without_the_nvidia_runtime_the_log_says_why_no_gpu_is_used_and_gpufleet_gpus_shows_it(compose_stack):
    """This engine has no NVIDIA runtime: the stack starts on virtual slots and says so once, in one line; the
    command README gives for a GPU box shows the same from inside the autoscaler."""
    stack = compose_stack
    log = stack.compose("logs", "--no-color", "autoscaler", check=False).stdout
    lines = [x for x in log.splitlines() if "no GPU used:" in x]
    assert lines and "Docker has no NVIDIA runtime" in lines[0] and "virtual slots" in lines[0], lines
    out = stack.compose("exec", "-T", "autoscaler", "gpufleet", "gpus").stdout
    assert out.startswith("source: 6 virtual slots (no GPU used: Docker has no NVIDIA runtime"), out[:300]
    assert "vslot0" in out

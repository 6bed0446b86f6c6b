"""The admin API in process: a real Controller on the local runtime (no replica started), a Gateway whose
nginx check always passes (no nginx is run here), the real FastAPI app through Starlette's TestClient."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.admin import create_admin_app
from autoscaler.config import parse_config
from autoscaler.controller import Controller
from autoscaler.gateway.nginx import Gateway
from autoscaler.gpus.placement import make_placer
from autoscaler.runtime.base import Replica
from autoscaler.runtime.local import LocalRuntime
from autoscaler.status import FleetStatus


def controller(tmp: Path) -> Controller:
    cfg = parse_config({"pools": [{"name": "chat", "model": "m"}], "gpus": {"source": "none"}})
    (tmp / "nginx").mkdir()
    gw = Gateway(tmp / "nginx", cfg.gateway, lambda: (True, ""), lambda: None)
    return Controller(cfg, LocalRuntime(tmp / "replicas"), gw, make_placer(cfg.gpus))


def metric(text: str, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name}


def test_a_token_with_any_byte_is_a_401_not_a_500(tmp_path):
    app = create_admin_app(controller(tmp_path), token="s3cret")
    c = TestClient(app)
    assert c.get("/status").status_code == 401
    for bad in ("Bearer \xe9t\xe9".encode("latin-1"), b"Bearer \xff\xfe", "Bearer s3cret\u00e9".encode()):
        r = c.get("/status", headers={"authorization": bad})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", bad
    r = c.get("/status", headers={"authorization": "Bearer s3cret"})
    assert r.status_code == 200
    assert c.get("/healthz").status_code == 200, "liveness needs no token"


def test_the_events_counter_never_goes_down_and_liveness_is_exported(tmp_path):
    ctl = controller(tmp_path)
    c = TestClient(create_admin_app(ctl))
    seen = []
    for i in range(1, 1301):  # more than the 1000 events kept for /status
        ctl.event("start" if i % 2 else "stop", "chat")
        if i % 100 == 0:
            seen.append(sum(metric(c.get("/metrics").text, "gpufleet_events_total").values()))
    assert seen == sorted(seen) and seen[-1] == 1300, seen
    ctl.last_tick_at, ctl.tick_errors = 1234.5, 2
    ctl.tick_seconds.append(0.25)
    text = c.get("/metrics").text
    assert metric(text, "gpufleet_last_tick_timestamp_seconds") == {(): 1234.5}
    assert metric(text, "gpufleet_tick_duration_seconds") == {(): 0.25}
    assert metric(text, "gpufleet_tick_errors_total") == {(): 2.0}
    st = FleetStatus.model_validate(c.get("/status").json())
    assert (st.last_tick_at, st.last_tick_s, st.tick_errors) == (1234.5, 0.25, 2)


def _serve(body_for: dict[str, bytes], drip_s: float = 0.0):  # noqa: ANN202
    """A real HTTP server on 127.0.0.1 answering each path with its bytes (dripped, if asked)."""
    import asyncio

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        body = body_for.get(line.split()[1], b"")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(len(body)):
            writer.write(body[i:i + 1])
            await writer.drain()
            if drip_s:
                await asyncio.sleep(drip_s)
        writer.close()

    return asyncio.start_server(handle, "127.0.0.1", 0)


def test_a_replica_with_slow_or_poisoned_metrics_fails_its_own_scrape_in_bounded_time(tmp_path):
    import asyncio
    import time

    from autoscaler.runtime.base import Replica

    good = b"vllm:num_requests_running 1\nvllm:num_requests_waiting 0\n"
    cases = {"drip": (good * 20, 0.3), "nan": (b"vllm:num_requests_running NaN\n", 0.0),
             "nole": (b"# TYPE vllm:time_to_first_token_seconds histogram\n"
                      b"vllm:time_to_first_token_seconds_bucket 1\n", 0.0),
             "good": (good, 0.0)}

    async def go() -> dict[str, tuple[float, int, int]]:
        ctl = controller(tmp_path)
        out = {}
        for name, (body, drip) in cases.items():
            server = await _serve({"/metrics": body}, drip)
            port = server.sockets[0].getsockname()[1]
            r = Replica(id=f"r-{name}", pool="chat", model="m", role="active", target_role="active",
                        url=f"http://127.0.0.1:{port}", upstream=f"127.0.0.1:{port}", gpus=(), config_hash="",
                        created_at=0.0, alive=True)
            t = time.monotonic()
            await ctl.observer.scrape(r)
            h = ctl.health[r.id]
            out[name] = (time.monotonic() - t, h.failures, len(h.samples))
            server.close()
        await ctl.close()
        return out

    got = asyncio.run(go())
    timeout = parse_config({"pools": [{"name": "c", "model": "m"}]}).scrape_timeout_s
    assert got["drip"][0] < timeout + 0.5, f"a dripping /metrics held the scrape {got['drip'][0]:.1f}s"
    for name in ("drip", "nan", "nole"):
        assert got[name][1:] == (1, 0), f"{name}: one failed scrape, no sample ({got[name]})"
    assert got["good"][1:] == (0, 1)


def test_cost_decision_gpu_and_slo_metrics(tmp_path):
    """What the dashboards join and sum: GPU-seconds charged to the holder's (pool, role), idle GPUs, the GPU
    holder info with DCGM's UUID, scale decisions by driver from 0, the SLO's bucket label as vLLM spells it."""
    ctl = controller(tmp_path)
    c = TestClient(create_admin_app(ctl))
    gpus = [g.id for g in ctl.placer.topo.gpus]

    def rep(rid: str, role: str, held: tuple[str, ...]) -> Replica:
        return Replica(rid, "chat", "m", role, role, "http://127.0.0.1:1", "127.0.0.1:1", held, "h", 0.0, True)

    ctl.replicas = [rep("r-chat-1", "active", (gpus[0], gpus[1])), rep("r-chat-2", "warm", (gpus[2],))]
    ctl._account_gpu_time()
    ctl._accounted_at -= 10  # ten seconds later
    ctl._account_gpu_time()
    text = c.get("/metrics").text
    secs = metric(text, "gpufleet_gpu_seconds_total")
    assert round(secs[(("pool", "chat"), ("role", "active"))]) == 20  # two GPUs for 10 s
    assert round(secs[(("pool", "chat"), ("role", "warm"))]) == 10
    assert round(metric(text, "gpufleet_gpu_idle_seconds_total")[()]) == 10 * (len(gpus) - 3)
    holders = metric(text, "gpufleet_gpu_holder")
    assert holders[(("UUID", gpus[1]), ("gpu", "1"), ("pool", "chat"), ("replica", "r-chat-1"), ("role", "active"))]
    assert holders[(("UUID", gpus[3]), ("gpu", "3"), ("pool", ""), ("replica", ""), ("role", "free"))]
    ups = metric(text, "gpufleet_scale_decisions_total")
    assert ups[(("direction", "up"), ("driver", "panic"), ("pool", "chat"))] == 0
    assert metric(text, "gpufleet_pool_slo_ttft_bound_info") == {(("bound", "2.5"), ("pool", "chat")): 1.0}
    assert metric(text, "gpufleet_events_total")[(("kind", "reclaim"), ("pool", "chat"))] == 0


def test_a_hung_nvml_call_never_holds_the_loop_and_no_second_read_piles_up(tmp_path):
    import asyncio
    import threading

    from autoscaler.gpus.nvml import read_topology
    from autoscaler.gpus.topology import load_topology_file
    from tests.fake_nvml import FakeNvml

    ctl = controller(tmp_path)
    fake = FakeNvml(load_topology_file(Path(__file__).parent.parent / "fixtures" / "topology"
                                       / "2xrtx5090-pcie-phb-threadripper.txt"))
    release, calls = threading.Event(), []

    def hang(h: int) -> object:
        calls.append(h)
        release.wait(10)
        raise fake.NVMLError(15)  # NVML_ERROR_GPU_IS_LOST, once it returns at all

    fake.nvmlDeviceGetUtilizationRates = hang
    ctl.placer.nvml = fake
    ctl.placer.topo = read_topology(fake)

    async def go() -> tuple[float, list[int]]:
        t0 = asyncio.get_running_loop().time()
        for _ in range(5):  # five ticks' worth of scheduling while the first read hangs
            ctl.schedule_gpu_reading()
            await asyncio.sleep(0.05)
        took, while_hung = asyncio.get_running_loop().time() - t0, list(calls)
        release.set()
        assert ctl._telemetry is not None
        await ctl._telemetry
        return took, while_hung

    took, while_hung = asyncio.run(go())
    assert took < 1.0, "scheduling a reading must not wait for NVML"
    assert while_hung == [0], "one read in flight at a time"
    assert [r.index for r in ctl.gpu_readings] == [0, 1], "the hung field is left out, the rest is read"
    assert ctl.gpu_readings[0].util_pct is None and ctl.gpu_readings[0].fb_used_mib is not None


def test_a_hung_nvml_health_check_never_holds_the_loop_and_cordons_once_it_returns(tmp_path):
    import asyncio
    import threading

    from autoscaler.gpus.nvml import read_topology
    from autoscaler.gpus.topology import load_topology_file
    from tests.fake_nvml import FakeNvml

    ctl = controller(tmp_path)
    fake = FakeNvml(load_topology_file(Path(__file__).parent.parent / "fixtures" / "topology"
                                       / "4xl40s-pcie-node-sys-2socket-nics.txt"))
    ctl.placer.nvml, ctl.placer.topo = fake, read_topology(fake)
    release, real, hung = threading.Event(), fake.nvmlDeviceGetMemoryInfo, []

    def hang_then_lost(h: int) -> object:
        if h == 2:
            hung.append(h)
            release.wait(10)
            raise fake.NVMLError(15)  # NVML_ERROR_GPU_IS_LOST
        return real(h)

    fake.nvmlDeviceGetMemoryInfo = hang_then_lost

    async def go() -> tuple[float, dict[str, str]]:
        t0 = asyncio.get_running_loop().time()
        for _ in range(4):  # what the tick calls; a second check never starts while one hangs
            ctl.schedule_gpu_check()
            await asyncio.sleep(0.05)
        took, before = asyncio.get_running_loop().time() - t0, dict(ctl.placer.cordoned)
        assert hung == [2], "one check in flight at a time"
        release.set()
        assert ctl._gpu_check is not None
        await ctl._gpu_check
        return took, before

    took, before = asyncio.run(go())
    assert took < 1.0 and before == {}, "nothing is cordoned while the call hangs, and nothing waits for it"
    gid = ctl.placer.topo.gpus[2].id
    assert list(ctl.placer.cordoned) == [gid]
    assert [e for e in ctl.events if e["kind"] == "cordon"][0]["gpu"] == gid

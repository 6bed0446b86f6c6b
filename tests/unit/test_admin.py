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
            await ctl._scrape(r)
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

"""The gateway's access log (nginx's syslog datagrams, `gpufleet_edge` format) as edge metrics."""

from __future__ import annotations

import asyncio
import json
import re
import socket

import pytest

from autoscaler.gateway.edge import REFUSALS, EdgeStats, listen, listen_unix, parse_line

POOLS, MODELS = ("chat", "code"), ("tiny-chat", "tiny-alias", "coder")


def datagram(status: int | str, rt: str, uri: str = "/v1/chat/completions", route: str = "", model: str = "") -> str:
    # what nginx sends with `syslog:...,tag=gpufleet,nohostname` and `escape=json`
    body = json.dumps({"status": str(status), "rt": rt, "uri": uri, "route": route, "model": model, "key": ""})
    return f"<190>Dec  2 05:20:49 gpufleet: {body}"


def test_a_routed_request_counts_for_its_pool_model_and_status():
    rec = parse_line(datagram(200, "0.731", route="pool=chat; reason=alias", model="tiny-alias"), POOLS, MODELS)
    assert (rec.pool, rec.model, rec.status, rec.seconds) == ("chat", "tiny-alias", "200", 0.731)


def test_refused_before_routing_is_pool_none_and_unknown_names_never_become_labels():
    assert parse_line(datagram(401, "0.000"), POOLS, MODELS).pool == "none"
    rec = parse_line(datagram(200, "1.0", route="pool=evil; reason=x", model="x" * 300), POOLS, MODELS)
    assert (rec.pool, rec.model) == ("other", "other")


def test_health_probes_are_not_api_traffic():
    assert parse_line(datagram(200, "0.000", uri="/health"), POOLS, MODELS) is None


@pytest.mark.parametrize("line", ["", "hello", "<190>gpufleet: {not json", datagram("2000", "0.1"),
                                  datagram(200, "fast"), "<190>gpufleet: []"])
def test_garbage_is_counted_not_raised(line: str):
    stats = EdgeStats(POOLS, MODELS)
    stats.add_line(line)
    assert stats.lines["unparsable"] == 1 and not sum(stats.requests.values())


def test_latency_buckets_are_cumulative_per_pool():
    stats = EdgeStats(POOLS, MODELS)
    for rt in ("0.04", "0.3", "0.3", "700"):
        stats.add_line(datagram(200, rt, route="pool=code; reason=model", model="coder"))
    b = dict(stats.latency["code"].buckets())
    assert (b["0.05"], b["0.5"], b["600"], b["+Inf"]) == (1, 3, 3, 4)
    assert stats.latency["code"].sum == pytest.approx(700.64)
    fams = {f.name: f for f in stats.metrics()}
    totals = {tuple(sorted(s.labels.items())): s.value for s in fams["gpufleet_edge_requests"].samples
              if s.name.endswith("_total")}
    assert totals.pop((("model", "coder"), ("pool", "code"), ("status", "200"))) == 4
    # the gateway's refusals are there from 0, so Prometheus sees the first one as an increase
    assert totals == {(("model", "none"), ("pool", "none"), ("status", st)): 0 for st in REFUSALS}


async def counted(stats: EdgeStats, transport: asyncio.DatagramTransport) -> None:
    """Until the receiver has counted a request (bounded), then close it."""
    try:
        for _ in range(100):
            if sum(stats.requests.values()):
                return
            await asyncio.sleep(0.01)
    finally:
        transport.close()


def test_datagrams_arrive_over_udp():
    stats = EdgeStats(POOLS, MODELS)

    async def go() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        transport = await listen(stats, "127.0.0.1", port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(datagram(429, "0.001", route="pool=chat; reason=model", model="tiny-chat").encode(),
                      ("127.0.0.1", port))
        await counted(stats, transport)

    asyncio.run(go())
    assert {k: n for k, n in stats.requests.items() if n} == {("chat", "tiny-chat", "429"): 1}


def test_a_taken_port_is_a_clear_error():
    async def go() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
            held.bind(("127.0.0.1", 0))
            with pytest.raises(RuntimeError, match="edge_log_port"):
                await listen(EdgeStats(POOLS, MODELS), "127.0.0.1", held.getsockname()[1])

    asyncio.run(go())


def test_the_docker_gateway_logs_to_a_socket_path_never_a_name_nginx_must_resolve_at_start():
    """nginx resolves a syslog host when it loads its config: a hostname there would keep a gateway restarted
    while the autoscaler is down from starting at all."""
    from autoscaler.gateway.nginx import docker_nginx_conf

    targets = re.findall(r"syslog:server=([^,\s]+)", docker_nginx_conf())
    assert targets == ["unix:/etc/nginx/gpufleet/edge-log.sock"]
    assert "syslog" not in docker_nginx_conf(edge_log=False)


def test_datagrams_arrive_over_a_unix_socket_that_another_user_may_write(tmp_path):
    stats = EdgeStats(POOLS, MODELS)
    path = tmp_path / "edge-log.sock"
    path.write_text("a stale file from a killed run")

    async def go() -> None:
        transport = await listen_unix(stats, path)
        assert path.stat().st_mode & 0o777 == 0o666, "nginx's workers are another user"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as tx:
            tx.sendto(datagram(200, "0.5", route="pool=code; reason=model", model="coder").encode(), str(path))
        await counted(stats, transport)

    asyncio.run(go())
    assert {k: n for k, n in stats.requests.items() if n} == {("code", "coder", "200"): 1}


@pytest.mark.parametrize(("up", "retries"), [
    ("127.0.0.1:5001", 0), ("127.0.0.1:5001, 127.0.0.1:5002", 1), ("10.0.0.2:8000, 10.0.0.3:8000, 10.0.0.4:8000", 2),
    # an internal redirect: the groups before " : " went elsewhere (the activator), not to replicas
    ("127.0.0.1:8182 : 127.0.0.1:5001, 127.0.0.1:5002", 1), ("", 0), ("-", 0),
])
def test_a_request_nginx_sent_to_another_replica_counts_as_retried(up: str, retries: int):
    body = json.dumps({"status": "200", "rt": "0.5", "uri": "/_pool/chat/v1/completions", "route": "pool=chat",
                       "model": "tiny-chat", "key": "", "up": up})
    stats = EdgeStats(POOLS, MODELS)
    stats.add_line(f"<190>gpufleet: {body}")
    assert parse_line(f"<190>gpufleet: {body}", POOLS, MODELS).retries == retries
    text = "".join(f"{s.name} {s.labels} {s.value}\n" for m in stats.metrics() for s in m.samples)
    assert f"gpufleet_edge_retries_total {{'pool': 'chat'}} {retries}\n" in text
    assert "gpufleet_edge_retries_total {'pool': 'code'} 0\n" in text  # every pool from 0

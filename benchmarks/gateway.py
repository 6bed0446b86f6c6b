"""Gateway benchmarks on this host: nginx reload time, time from reload to the
first response from a newly routed replica, and nginx's proxy overhead.

    python -m benchmarks.gateway [--requests 2000] [--concurrency 16] [--reloads 30]

Real nginx (Debian, njs routing) and two real replica processes on the sim
engine with a fast profile (2 ms steps), so the replica itself adds little.
Auth on: every proxied request carries an API key that njs hashes and looks up
(per-key and global limits set high enough not to bind), so the overhead
includes the key check. `--no-auth` measures without it. `--routing chain`: the pool has a fallback
and two routing rules that do not match, so njs evaluates the rules and reads the saturation state
file on every request; `--routing alias`: requests name an alias, so every body is rewritten
(proxy_set_body). `--edge-log`: nginx sends every request's access-log line to a receiver in this
process over UDP (the edge metrics, as the autoscaler does), and the run reports how many it counted.
`--client-keepalive 75`: clients keep their connections to nginx between requests (the default, 0, opens
one per request), to measure what closing them costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from autoscaler.gateway.access import KeysSource, hash_key, new_key
from autoscaler.gateway.edge import EdgeStats
from autoscaler.gateway.edge import listen as listen_edge
from autoscaler.gateway.nginx import Gateway, LocalNginx
from autoscaler.gateway.render import PoolRoute
from autoscaler.gateway.settings import GatewayConfig
from tests.helpers import free_port, wait_for

MODEL = "bench"
KEY = new_key()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def start_replica() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "inference", "--port", str(port), "--model", MODEL,
                             "--load-time", "0", "--max-num-seqs", "256", "--step-base", "0.002",
                             "--step-per-seq", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, 20, "replica ready")
    return proc, f"127.0.0.1:{port}"


ALIAS = "bench-alias"


def routing(kind: str) -> dict[str, object] | None:
    """The routing table for --routing (what routing_table renders from a fleet.yaml)."""
    if kind == "chain":
        rules = [{"name": "h", "pool": "spare", "models": [], "tiers": [], "headers": {"x-workload": "batch"},
                  "over": None, "under": None},
                 {"name": "long", "pool": "spare", "models": [MODEL], "tiers": [], "headers": {}, "over": 4000,
                  "under": None}]
        return {"routes": {MODEL: "bench", "spare": "spare"}, "models": {"bench": MODEL, "spare": "spare"},
                "fallback": {"bench": [{"pool": "spare", "max_tokens": 64}]}, "rules": rules}
    if kind == "alias":
        return {"routes": {MODEL: "bench", ALIAS: "bench"}, "models": {"bench": MODEL}}
    return None


async def load(url: str, n: int, conc: int, model: str = MODEL) -> list[float]:
    lat: list[float] = []
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=conc), timeout=30,
                                 headers={"Authorization": f"Bearer {KEY}"}) as c:
        sem = asyncio.Semaphore(conc)

        async def one() -> None:
            async with sem:
                t = time.perf_counter()
                r = await c.post(f"{url}/v1/chat/completions", json=body)
                r.raise_for_status()
                lat.append(time.perf_counter() - t)

        await asyncio.gather(*(one() for _ in range(n // 10)))  # warm up connections
        lat.clear()
        await asyncio.gather(*(one() for _ in range(n)))
    return lat


async def reloads(gw: Gateway, url: str, a: str, b: str, n: int) -> tuple[list[float], list[float]]:
    """Alternate the upstream between {a} and {a, b}; time the reload and reload → first response from b."""
    flush, effective = [], []
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as c:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
        for _ in range(n):
            await gw.update([PoolRoute("bench", MODEL, (a,), replica_ids=("a",))])
            await asyncio.sleep(0.6)
            t0 = time.perf_counter()
            await gw.update([PoolRoute("bench", MODEL, (a, b), replica_ids=("a", "b"))])
            flush.append(gw.stats.last_reload_s or 0)
            while True:
                try:
                    r = await c.post(f"{url}/v1/completions", json=body)
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    continue  # an idle keep-alive connection the old worker closed: retry, like clients do
                if r.headers.get("x-gpufleet-replica") == "b":
                    effective.append(time.perf_counter() - t0)
                    break
                if time.perf_counter() - t0 > 5:
                    raise RuntimeError("new upstream never served")
            await asyncio.sleep(0.6)
    return flush, effective


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--reloads", type=int, default=30)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-auth", action="store_true", help="gateway.auth off: no key check")
    ap.add_argument("--routing", choices=["none", "chain", "alias"], default="none",
                    help="chain: fallback + rules (state file read per request); alias: body rewritten")
    ap.add_argument("--edge-log", action="store_true", help="access log to a UDP receiver (the edge metrics)")
    ap.add_argument("--client-keepalive", type=int, default=0,
                    help="gateway.client_keepalive_s: 0 (the default) closes each client connection after its answer")
    args = ap.parse_args()
    (r1, a), (r2, b) = start_replica(), start_replica()
    run = Path(tempfile.mkdtemp(prefix="gpufleet-bench-"))
    cfg = GatewayConfig(port=free_port(), reload_min_interval_s=0, client_keepalive_s=args.client_keepalive)
    edge_port = free_port()
    ng = LocalNginx(run, cfg, edge_log=f"127.0.0.1:{edge_port}" if args.edge_log else None)
    ng.render_main()
    keys_file = run / "keys.yaml"
    keys_file.write_text(f"keys: [{{name: bench, sha256: {hash_key(KEY)}, requests_per_s: 100000, "
                         f"burst: 100000, concurrent: 10000}}]\n")
    keys = KeysSource(not args.no_auth, None if args.no_auth else keys_file, 100000, 100000, 10000)
    gw = Gateway(ng.conf_dir, cfg, ng.validate, ng.reload, keys=keys, routing=routing(args.routing))
    gw.write_initial()
    spare = [PoolRoute("spare", "spare", (b,), replica_ids=("b",))] if args.routing == "chain" else []
    ng.start()
    url = f"http://127.0.0.1:{cfg.port}"
    try:
        async def go() -> dict[str, object]:
            await gw.update([PoolRoute("bench", MODEL, (a,), replica_ids=("a",)), *spare])
            gw.publish_state({"bench": False, "spare": False}, time.time() + 3600)  # fresh for the whole run
            await asyncio.sleep(0.5)
            edge = EdgeStats(("bench", "spare"), (MODEL, ALIAS))
            rx = await listen_edge(edge, "127.0.0.1", edge_port) if args.edge_log else None
            direct = await load(f"http://{a}", args.requests, args.concurrency)
            proxied = await load(url, args.requests, args.concurrency, ALIAS if args.routing == "alias" else MODEL)
            await asyncio.sleep(0.5)  # the last datagrams
            counted = sum(n for (pool, _, _), n in edge.requests.items() if pool == "bench")
            if rx is not None:
                rx.close()
            flush, eff = await reloads(gw, url, a, b, args.reloads)
            return {"direct": direct, "proxied": proxied, "flush": flush, "effective": eff, "edge_counted": counted}

        res = asyncio.run(go())
    finally:
        ng.stop()
        r1.terminate()
        r2.terminate()
    d, p = res["direct"], res["proxied"]
    out = {
        "auth": not args.no_auth, "routing": args.routing, "edge_log": args.edge_log,
        # through nginx: the warm-up (a tenth) and the measured requests
        "edge_sent": args.requests + args.requests // 10 if args.edge_log else None,
        "edge_counted": res["edge_counted"] if args.edge_log else None,
        "concurrency": args.concurrency, "requests": args.requests,
        "direct_ms": {"p50": 1e3 * pct(d, 50), "p99": 1e3 * pct(d, 99)},
        "nginx_ms": {"p50": 1e3 * pct(p, 50), "p99": 1e3 * pct(p, 99)},
        "overhead_ms": {"p50": 1e3 * (pct(p, 50) - pct(d, 50)), "p99": 1e3 * (pct(p, 99) - pct(d, 99))},
        # --reloads 0: none measured
        "reload_ms": {"p50": 1e3 * statistics.median(res["flush"]), "max": 1e3 * max(res["flush"]),
                      "n": len(res["flush"])} if res["flush"] else None,
        "reload_to_first_response_ms": {"p50": 1e3 * statistics.median(res["effective"]),
                                        "max": 1e3 * max(res["effective"])} if res["effective"] else None,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Keyless clients uploading slow 1 MB bodies, beside a keyed client: do they take its slots or nginx's memory?

    python -m benchmarks.keyless_flood [--root DIR] [--flood 100] [--seconds 20]

A local stack (auth on, one key, gateway-wide `global_concurrent: 64`), run from `--root` (default: this
checkout; give another one, e.g. a `git worktree` of an older commit, to compare). `--flood` keyless
connections each announce a 1 MB JSON body and send 1 kB of it a second; meanwhile the keyed client sends
5 requests a second. Reported: the keyed requests by status and their latency, what the keyless ones were
answered and when, and the nginx processes' resident memory before and during.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from autoscaler.gateway.access import hash_key
from benchmarks.from_zero import _port, _until

KEY = "gf-bench-" + "k" * 24
CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def nginx_rss_mib(run_dir: Path) -> float:
    """Resident memory of the stack's nginx master and workers."""
    try:
        master = int((run_dir / "nginx.pid").read_text())
    except (OSError, ValueError):
        return 0.0
    pids = [master] + [int(p) for p in subprocess.run(["pgrep", "-P", str(master)], capture_output=True,
                                                       text=True).stdout.split()]
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


async def keyless(port: int, seconds: float, out: list[tuple[float, str]]) -> None:
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000\r\n\r\n")
        await writer.drain()
        while time.monotonic() - t0 < seconds:
            try:
                line = await asyncio.wait_for(reader.readline(), 1.0)
                status = line.decode(errors="replace").split(" ", 2)[1] if line else "closed"
                out.append((time.monotonic() - t0, status))
                break
            except TimeoutError:
                writer.write(b"x" * 1024)  # a slow upload: 1 kB a second
                await writer.drain()
        else:
            out.append((seconds, "no answer"))
        writer.close()
    except (OSError, IndexError) as e:
        out.append((time.monotonic() - t0, type(e).__name__))


async def keyed(url: str, seconds: float, rate: float, out: list[tuple[int, float]]) -> None:
    async with httpx.AsyncClient(timeout=30) as c:
        async def one() -> None:
            t = time.monotonic()
            try:
                r = await c.post(f"{url}/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
                out.append((r.status_code, time.monotonic() - t))
            except httpx.HTTPError:
                out.append((0, time.monotonic() - t))
        tasks = []
        for _ in range(int(seconds * rate)):
            await asyncio.sleep(1 / rate)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)


def run(root: Path, flood: int, seconds: float) -> dict[str, Any]:
    gw, admin, act = _port(), _port(), _port()
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.yaml"
        keys.write_text(yaml.safe_dump({"keys": [{"name": "bench", "sha256": hash_key(KEY), "requests_per_s": 100,
                                                  "burst": 200, "concurrent": 64}]}))
        cfg = {"gateway": {"port": gw, "client_max_body_size": "2m", "edge_log_port": None, "status_port": None,
                           "auth": {"enabled": True, "keys_file": str(keys), "global_concurrent": 64}},
               "admin": {"port": admin}, "activator": {"port": act}, "prometheus": {"enabled": False},
               "gpus": {"source": "none"},
               "pools": [{"name": "chat", "model": "tiny-chat", "gpus_per_replica": 0, "min_replicas": 1,
                          "max_replicas": 1, "warm_pool": {"min": 0, "max": 0}, "targets": {"concurrency": 8},
                          "sim": {"profile": "tiny", "load_time_s": 0.5, "max_num_seqs": 16, "step_base_s": 0.01}}]}
        f = Path(tmp) / "fleet.yaml"
        f.write_text(yaml.safe_dump(cfg))
        run_dir = Path(tmp) / "run"
        proc = subprocess.Popen([sys.executable, "-m", "autoscaler.cli", "up", "--local", "--config", str(f),
                                 "--run-dir", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        try:
            url = f"http://127.0.0.1:{gw}"
            _until(lambda: httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=5,
                                      headers={"Authorization": f"Bearer {KEY}"}).status_code == 200, 60)
            before = nginx_rss_mib(run_dir)
            answered: list[tuple[float, str]] = []
            served: list[tuple[int, float]] = []
            peak = [before]

            async def go() -> None:
                async def watch() -> None:
                    while True:
                        peak.append(nginx_rss_mib(run_dir))
                        await asyncio.sleep(0.5)
                w = asyncio.create_task(watch())
                await asyncio.gather(*(keyless(gw, seconds, answered) for _ in range(flood)),
                                     keyed(url, seconds, 5.0, served))
                w.cancel()

            asyncio.run(go())
        finally:
            proc.terminate()
            proc.wait(60)
    codes: dict[str, int] = {}
    for _, a in answered:
        codes[a] = codes.get(a, 0) + 1
    ok = [t for s, t in served if s == 200]
    return {"keyed": {str(s): sum(1 for x, _ in served if x == s) for s in sorted({x for x, _ in served})},
            "keyed_p50_ms": round(1000 * statistics.median(ok)) if ok else None,
            "keyless_answers": codes,
            "keyless_answered_within_s": round(max((t for t, a in answered if a == "401"), default=0), 2),
            "nginx_rss_mib": [round(before, 1), round(max(peak), 1)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--flood", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    print(run(args.root.resolve(), args.flood, args.seconds))


if __name__ == "__main__":
    main()

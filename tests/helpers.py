"""Shared test helpers: free ports, polling with a deadline, real-process stacks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
import yaml

from autoscaler.procs import pid_alive  # noqa: F401  (tests import it from here)
from autoscaler.status import FleetStatus

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except (httpx.HTTPError, OSError, KeyError, ValueError) as e:
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


LLAMA_SERVER = ROOT / "build" / "llama-server" / "llama-server"


def tiny_gguf(path: Path) -> Path:
    """The tiny random-weight llama model (third_party/llama-server/tiny_gguf.py), written to path once."""
    if not path.exists():
        import importlib.util

        spec = importlib.util.spec_from_file_location("tiny_gguf", ROOT / "third_party/llama-server/tiny_gguf.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        path.parent.mkdir(parents=True, exist_ok=True)
        mod.write(path)
    return path


def require_llama_server() -> Path:
    """llama.cpp's server, built by third_party/llama-server/build.sh (`make llama-server`). In CI a missing one
    is a failure; elsewhere the tests of the third-party engine are skipped, saying how to get it."""
    if LLAMA_SERVER.is_file() and os.access(LLAMA_SERVER, os.X_OK):
        return LLAMA_SERVER
    msg = f"MISSING {LLAMA_SERVER.relative_to(ROOT)}: build it with `make llama-server` (about 8 minutes, once)"
    if os.environ.get("GPUFLEET_REQUIRE_INTEGRATION"):
        pytest.fail(msg)
    pytest.skip(msg)


def require_host_binaries() -> None:
    """Integration tests need real nginx (+ njs) and Prometheus. In CI a missing one is a failure."""
    missing = [b for b in ("nginx", "prometheus") if shutil.which(b) is None]
    if not any(os.path.exists(p) for p in ("/usr/lib/nginx/modules/ngx_http_js_module.so",)):
        missing.append("nginx njs module (libnginx-mod-http-js)")
    if missing:
        msg = (f"MISSING {', '.join(missing)}: integration tests need them "
               "(Debian: apt-get install nginx libnginx-mod-http-js njs prometheus)")
        if os.environ.get("GPUFLEET_REQUIRE_INTEGRATION"):
            pytest.fail(msg)
        pytest.skip(msg)


@contextlib.contextmanager
def replica_process(*args: str, model: str = "m1") -> Iterator[str]:
    """`python -m inference` on a free port; yields its URL once /health answers (the model is loaded)."""
    port = free_port()
    import tempfile

    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, "-m", "inference", "--port", str(port), "--model", model, *args],
                                stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, 20, "replica /health")
            yield url
        finally:
            proc.terminate()
            proc.wait(10)
            out.seek(0)
            log = out.read().decode(errors="replace")
        # whatever the test did to it, the replica answered; an exception it logged is a 500 someone got
        assert "Traceback" not in log, f"the replica logged an exception:\n{log[-3000:]}"


class LocalStack:
    """`gpufleet up --local` as a real subprocess, on free ports, in a temp run dir."""

    def __init__(self, tmp: Path, config: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.env = {**os.environ, **(env or {})}
        tmp.mkdir(parents=True, exist_ok=True)
        self.run_dir = tmp / "run"
        self.gw_port, self.admin_port, self.prom_port = free_port(), free_port(), free_port()
        cfg = dict(config)
        cfg.setdefault("gateway", {})["port"] = self.gw_port
        # API keys are tested on their own (test_access.py); elsewhere the gateway is open, as a laptop's may be
        cfg["gateway"].setdefault("auth", {"enabled": False})
        cfg.setdefault("admin", {})["port"] = self.admin_port
        cfg.setdefault("prometheus", {})["port"] = self.prom_port
        cfg.setdefault("activator", {}).setdefault("port", free_port())  # two stacks at once never collide
        cfg["gateway"].setdefault("edge_log_port", free_port())  # UDP: free for TCP is free enough here
        cfg["gateway"].setdefault("status_port", free_port())
        cfg["prometheus"].setdefault("nginx_exporter_port", free_port())
        self.config_path = tmp / "fleet.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.url = f"http://127.0.0.1:{self.gw_port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "gpufleet.log"
        self.seen_pids: set[int] = set()

    def start(self, active: int = 1, timeout: float = 45) -> LocalStack:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "autoscaler.cli", "up", "--local", "--config",
                 str(self.config_path), "--run-dir", str(self.run_dir)],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env,
            )
        if active:
            self.wait_active(active, timeout)
        else:  # a pool at zero: up once the admin API and the gateway answer
            wait_for(lambda: self.status() and httpx.get(f"{self.url}/health", timeout=2).status_code == 200,
                     timeout, "the stack's admin API and gateway")
        return self

    @property
    def admin_token(self) -> str:
        """The admin token the stack made on first start (run/admin-token)."""
        try:
            return (self.run_dir / "admin-token").read_text().strip()
        except OSError:
            return ""

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}

    def admin_get(self, path: str, timeout: float = 5) -> httpx.Response:
        return httpx.get(f"{self.admin}{path}", headers=self.admin_headers, timeout=timeout)

    def replica_headers(self, pool: str = "chat") -> dict[str, str]:
        """What the stack shows a replica of pool: the key derived from run/backend-secret, as the stack does."""
        from autoscaler.backend_auth import BackendKeys, auth_headers

        return auth_headers(BackendKeys((self.run_dir / "backend-secret").read_text().strip()), pool)

    def status(self) -> dict[str, Any]:
        r = self.admin_get("/status")
        r.raise_for_status()
        st = r.json()
        FleetStatus.model_validate(st)  # /status is one typed model
        self._remember_pids()
        return st

    def _remember_pids(self) -> None:
        for f in (self.run_dir / "replicas").glob("r-*.json"):
            try:
                pid = json.loads(f.read_text()).get("pid")
            except (OSError, ValueError):
                continue
            if isinstance(pid, int):
                self.seen_pids.add(pid)

    def pool(self, name: str = "chat") -> dict[str, Any]:
        return self.status()["pools"][name]

    def replicas(self, pool: str = "chat", role: str | None = None, ready: bool | None = None) -> list[dict]:
        reps = self.pool(pool)["replicas"]
        return [r for r in reps if (role is None or r["role"] == role)
                and (ready is None or r["ready"] == ready)]

    def wait_active(self, n: int, timeout: float = 30, pool: str = "chat") -> list[dict]:
        def ok() -> list[dict] | None:
            self._check_alive()
            reps = self.replicas(pool, role="active", ready=True)
            if len(reps) >= n and self.gateway_serves():
                return reps
            return None

        return wait_for(ok, timeout, f"{n} active replicas serving through the gateway")

    def gateway_serves(self) -> bool:
        r = httpx.get(f"{self.url}/v1/models", timeout=2)
        return r.status_code == 200 and bool(r.json()["data"])

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"gpufleet exited with {self.proc.returncode}:\n{self.tail_log()}")

    def tail_log(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-n:])
        except OSError:
            return ""

    def replica_pid(self, rid: str) -> int:
        return int(json.loads((self.run_dir / "replicas" / f"{rid}.json").read_text())["pid"])

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        ev = self.status()["events"]
        return [e for e in ev if kind is None or e["kind"] == kind]

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self._remember_pids()
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"gpufleet did not stop on SIGINT:\n{self.tail_log()}") from None
        return int(self.proc.returncode)

    def leftover_processes(self) -> list[str]:
        """Replicas or nginx/prometheus of this stack still running."""
        left = [f"replica pid {p}" for p in self.seen_pids if pid_alive(p)]
        for pid_file in (self.run_dir / "nginx.pid", self.run_dir / "prometheus" / "prometheus.pid"):
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                continue
            if pid_alive(pid):
                left.append(f"{pid_file.name} {pid}")
        run = str(self.run_dir).encode()
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if run in (d / "cmdline").read_bytes() and pid_alive(int(d.name)):
                        left.append(f"pid {d.name}: {(d / 'cmdline').read_bytes()[:120]!r}")
                except OSError:
                    continue
        return left


def sim_pool(**over: Any) -> dict[str, Any]:
    """A small, quick pool: each request of 20 tokens takes ~1 s; 4 at a time per replica."""
    pool: dict[str, Any] = {
        "name": "chat",
        "model": "tiny-chat",
        "engine": "sim",
        "sim": {"profile": "tiny", "load_time_s": 1.0, "max_num_seqs": 4, "step_base_s": 0.05,
                "step_per_seq_s": 0.0},
        "gpus_per_replica": 0,
        "min_replicas": 1,
        "max_replicas": 4,
        "warm_pool": {"min": 1, "max": 1},
        "targets": {"concurrency": 5},
        "behavior": {"scale_down": {"stabilization_s": 8,
                                    "policies": [{"type": "replicas", "value": 4, "period_s": 5}]}},
        "drain_timeout_s": 30,
    }
    pool.update(over)
    return pool


@dataclass
class Answer:
    at: float
    model: str | None = None
    tokens: int = 0
    route: str = ""
    error: str | None = None


class Clients:
    """n openai clients sending back to back (max_tokens 20, about 1 s each) until stopped; bounded."""

    def __init__(self, url: str, n: int, model: str, max_s: float = 120) -> None:
        self.url, self.model, self.max_s = url, model, max_s
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self) -> None:
        c = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=60)
        end = time.monotonic() + self.max_s
        while not self._stop.is_set() and time.monotonic() < end:
            a = Answer(time.monotonic())
            try:
                raw = c.chat.completions.with_raw_response.create(
                    model=self.model, messages=[{"role": "user", "content": "hi"}], max_tokens=20)
                r = raw.parse()
                a.model, a.tokens, a.route = r.model, r.usage.completion_tokens, raw.headers.get("x-gpufleet-route", "")
            except Exception as e:  # every failure is recorded and fails the test
                a.error = f"{type(e).__name__}: {e}"
            self.answers.append(a)

    def since(self, t: float) -> list[Answer]:
        return [a for a in self.answers if a.at >= t]


def prometheus_diagnosis(stack: LocalStack) -> str:
    """For a failure's message: what Prometheus knows of the replicas' targets (health, last error, labels),
    what the autoscaler last wrote for it, and the errors in its log."""
    prom = stack.run_dir / "prometheus"
    out = []
    try:
        active = httpx.get(f"http://127.0.0.1:{stack.prom_port}/api/v1/targets", timeout=5).json()["data"]
        out += [f"target {t['labels']} health={t['health']} lastError={t['lastError']!r} "
                f"lastScrape={t['lastScrape']}" for t in active["activeTargets"]]
    except (httpx.HTTPError, ValueError, KeyError) as e:
        out.append(f"targets API: {e!r}")
    for name in ("targets.json", "prometheus.log"):
        f = prom / name
        text = f.read_text(errors="replace") if f.exists() else "(missing)"
        if name.endswith(".log"):
            text = "\n".join(line for line in text.splitlines() if "level=error" in line or "level=warn" in line)
        out.append(f"--- {name}:\n{text[-4000:]}")
    return "\n".join(out)

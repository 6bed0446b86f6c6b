"""nginx as a process (local runtime) or a container (docker runtime): write the
rendered files, validate with `nginx -t`, reload by SIGHUP. A render or a test
that fails keeps the last good files and is counted, never fatal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from autoscaler.backend_auth import BackendKeys
from autoscaler.gateway.access import AccessPolicy, KeysSource
from autoscaler.gateway.render import (
    NO_KEYS,
    TEMPLATES,
    PoolRoute,
    files_generation,
    packaged_template,
    render_gateway,
    render_template,
)
from autoscaler.gateway.routing import STATE_FILE, state_document
from autoscaler.gateway.settings import GatewayConfig
from autoscaler.histogram import Hist
from autoscaler.procs import pid_alive

log = logging.getLogger("gpufleet.gateway")

NJS_MODULE_CANDIDATES = (
    "/usr/lib/nginx/modules/ngx_http_js_module.so",
    "/usr/lib64/nginx/modules/ngx_http_js_module.so",
    "/etc/nginx/modules/ngx_http_js_module.so",
)


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )


def find_njs_module() -> str | None:
    return next((p for p in NJS_MODULE_CANDIDATES if os.path.exists(p)), None)


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# the autoscaler's own reload probes: not client traffic, so not in the edge metrics
def probe_headers(secret: str | None) -> dict[str, str]:
    """The autoscaler's reload probe: nginx leaves it out of the edge metrics only with the stack's secret."""
    return {"X-Gpufleet-Probe": secret or "probe"}


@dataclass
class GatewayStats:
    reloads: int = 0
    render_errors: int = 0
    last_reload_at: float | None = None  # wall clock
    last_reload_s: float | None = None  # nginx -t + signal
    # nginx -t + signal + (with a probe) until nginx serves the new config
    reload_seconds: Hist = field(default_factory=lambda: Hist((0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)))
    last_error: str | None = None


class Gateway:
    """Keeps nginx's generated files in step with the serving replicas.

    `validate` and `signal_reload` are the runtime-specific parts: a local
    process here, `docker exec` + kill for the Docker runtime.
    """

    def __init__(
        self,
        conf_dir: Path,
        cfg: GatewayConfig,
        validate: Callable[[], tuple[bool, str]],
        signal_reload: Callable[[], None],
        probe: Callable[[], str | None] | None = None,
        main_conf: Callable[[], str] | None = None,
        activator: bool = False,
        keys: KeysSource | None = None,
        routing: Mapping[str, Any] | None = None,
        state_dir: Path | None = None,
        backend_keys: BackendKeys | None = None,
    ) -> None:
        self.activator = activator
        self.backend_keys = backend_keys  # what replicas demand: nginx presents each pool's key
        # aliases, rules, fallbacks (gateway.routing.routing_table), and where njs reads which pools overflow:
        # nginx's workers read it per request, so it must be where they may read (state_dir; else conf_dir)
        self.state_file = (state_dir or conf_dir) / STATE_FILE
        self.routing = {**(routing or {}), "state_file": str(self.state_file)}
        # the API keys nginx enforces; re-read on change (None: auth on, no key valid)
        self.keys = keys
        self.conf_dir = conf_dir
        # Docker: nginx.conf itself is rendered here from fleet.yaml's gateway settings and lives in the
        # shared volume with the rest, so nothing the user sets is baked into the image.
        self._main_conf = main_conf
        self.cfg = cfg
        self._validate = validate
        self._signal = signal_reload
        # The generation a fresh request to nginx sees: after SIGHUP, old workers go on accepting for a
        # moment, so a reload counts as applied only once nginx answers with the new config.
        self._probe = probe
        self.stats = GatewayStats()
        self._applied: dict[str, str] | None = None
        self._pending: dict[str, str] | None = None
        self._last_reload_mono = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._rejected: dict[str, str] | None = None  # last set nginx -t refused: not retried
        self._last_msg: str | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_tag: object = None
        # called on the event loop after each reload, with the tag of the update it applied
        self.on_reload: list[Callable[[object], None]] = []

    def write_initial(self, keep_existing: bool = False, routes: Sequence[PoolRoute] = ()) -> None:
        """Files nginx needs before its first start: no pool is serving yet.

        keep_existing: nginx already runs on the files there (a restarted sidecar); leave them,
        and let the first update reload with what the adopted fleet serves.
        """
        shutil.copyfile(TEMPLATES / "gateway.js", self.conf_dir / "gateway.js")
        # every pool's model is known from the start (with no server yet): the activator holds, no 404
        files = render_gateway(routes, activator=self.activator, access=self._access(), routing=self.routing,
                               backend_keys=self.backend_keys)
        if self._main_conf is not None:
            files[MAIN_CONF] = self._main_conf()
        for name, text in files.items():
            if not (keep_existing and (self.conf_dir / name).exists()):
                atomic_write(self.conf_dir / name, text)
        self._applied = None if keep_existing else files

    async def update(self, routes: Sequence[PoolRoute], tag: object = None) -> bool:
        """Render; reload now, or as soon as the debounce interval allows. True if a change is due.
        `tag` comes back to the on_reload callbacks with the reload that applied these routes.

        `nginx -t` and the signal run in a thread: a slow check (or a slow Docker daemon behind
        `docker exec`) never stalls the event loop, so scrapes and /status go on meanwhile.
        """
        try:
            files = render_gateway(routes, self.cfg.upstream_template, self.activator, self._access(),
                                   self.routing, self.backend_keys)
            if self._main_conf is not None:
                files[MAIN_CONF] = self._main_conf()
        except Exception as e:  # a broken template must never take the gateway down
            self._error(f"render failed: {type(e).__name__}: {e}")
            return False
        if files != self._rejected:
            self._last_msg = None
        if files == self._applied or files == self._rejected:
            self._pending = None
            return False
        self._pending = files
        self._pending_tag = tag
        wait = self.cfg.reload_min_interval_s - (time.monotonic() - self._last_reload_mono)
        if wait <= 0:
            if self._lock.locked():
                return True  # a check is in flight (slow nginx -t): the next update applies these files
            await self.flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(wait, lambda: self._tasks.add(loop.create_task(self.flush())))
        return True

    def publish_state(self, saturated: Mapping[str, bool], now: float) -> None:
        """Which pools overflow to their fallbacks: a file njs reads per request, so no reload is needed.
        Rewritten every tick (its time stamp is how njs knows the autoscaler is alive)."""
        text = json.dumps(state_document(saturated, now))
        try:
            atomic_write(self.state_file, text)
        except OSError as e:
            self._error(f"writing {self.state_file.name} failed: {e}")

    def _access(self) -> AccessPolicy:
        if self.keys is None:
            return NO_KEYS
        err = self.keys.poll()  # a stat per tick; the file is read only when it changed
        if err:
            self._error(f"keys file rejected, the gateway keeps the last good keys: {err}")
        return self.keys.policy

    def access_summary(self) -> tuple[bool, int]:
        """(API keys checked, how many keys are in force)."""
        policy = self.keys.policy if self.keys else NO_KEYS
        return policy.enabled, len(policy.keys)

    @property
    def pending(self) -> bool:
        return self._pending is not None

    async def flush(self) -> None:
        self._timer = None
        self._tasks = {t for t in self._tasks if not t.done()}
        async with self._lock:
            files = self._pending
            if files is None:
                return
            tag = self._pending_tag
            self._pending = None
            ok = await asyncio.to_thread(self._write_check_signal, files)
        if ok:
            for cb in self.on_reload:
                cb(tag)

    def _write_check_signal(self, files: dict[str, str]) -> bool:
        t0 = time.monotonic()
        backup = {n: (self.conf_dir / n).read_text() for n in files if (self.conf_dir / n).exists()}
        for name, text in files.items():
            atomic_write(self.conf_dir / name, text)
        try:
            ok, out = self._validate()
        except Exception as e:  # the check could not run (gateway restarting, timeout): retried, not rejected
            for name, text in backup.items():
                atomic_write(self.conf_dir / name, text)
            self._error(f"nginx -t could not run ({type(e).__name__}: {e}); kept the last good config, will retry")
            return False
        if not ok:
            for name, text in backup.items():
                atomic_write(self.conf_dir / name, text)
            self._rejected = files
            self._error(f"nginx -t rejected the new config; kept the last good one: {out.strip()[-500:]}")
            return False
        try:
            self._signal()
        except Exception as e:
            self._error(f"reload signal failed: {e}")
            return False
        self._confirm(files_generation(files))
        dt = time.monotonic() - t0
        self._applied = files
        self._rejected = None
        self._last_msg = None
        self._last_reload_mono = time.monotonic()
        self.stats.reloads += 1
        self.stats.last_reload_at = time.time()
        self.stats.last_reload_s = dt
        self.stats.reload_seconds.observe(dt)
        return True

    def _confirm(self, generation: str | None, timeout_s: float = 3.0) -> None:
        """Wait (in the flush thread) until nginx serves `generation`; a probe that cannot reach nginx
        gives up at once, a reload never confirmed within the bound is an error, not a hang."""
        if self._probe is None or generation is None:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self._probe() == generation:
                    return
            except Exception as e:
                log.debug("reload not confirmed, probe failed: %s", e)
                return
            time.sleep(0.01)
        self._error(f"nginx did not serve the new config within {timeout_s:g}s of the reload signal")

    def _error(self, msg: str) -> None:
        # The same failure every tick is one failure, not one a second.
        if msg == self._last_msg:
            return
        self._last_msg = msg
        self.stats.render_errors += 1
        self.stats.last_error = msg
        log.error("gateway: %s", msg)


DOCKER_CONF_DIR = "/etc/nginx/gpufleet"  # a volume the autoscaler writes
MAIN_CONF = "nginx.conf"


# the access log's way to the autoscaler in Docker: a unix datagram socket in the shared conf volume. Not
# autoscaler:8183: nginx resolves a syslog host when it loads its config, so a gateway restarted while the
# autoscaler is down would not start at all ("host not found"); a socket path needs nothing to exist then.
EDGE_SOCKET_NAME = "edge-log.sock"
DOCKER_STATUS_PORT = 8184  # stub_status in the gateway container: compose's nginx-exporter scrapes gateway:8184
DOCKER_ACTIVATOR = "autoscaler:8182"  # the compose service, resolved by Docker's DNS at request time


def docker_nginx_conf(port: int = 8080, client_max_body_size: str = "1m", worker_shutdown_timeout: int = 240,
                      client_keepalive_s: int = 0, activator: bool = True, edge_log: bool = True,
                      stub_status: bool = True,
                      gateway_secret: str | None = None) -> str:
    """The gateway's nginx.conf in Docker: the same template as the local stack, container paths. The image
    carries it rendered with the defaults; the autoscaler renders it again from fleet.yaml."""
    return render_template(
        packaged_template("nginx.conf.j2"), mode="docker", njs_module="/usr/lib/nginx/modules/ngx_http_js_module.so",
        worker_processes="auto", run_dir="/var/run/gpufleet-nginx", conf_dir=DOCKER_CONF_DIR, foreground=False,
        worker_shutdown_timeout=worker_shutdown_timeout, access_log="/dev/stdout gpufleet", listen="0.0.0.0",
        error_log="/dev/stderr",
        port=port, client_max_body_size=client_max_body_size, client_keepalive_s=client_keepalive_s,
        activator=DOCKER_ACTIVATOR if activator else None, resolver="127.0.0.11",
        edge_log=f"unix:{DOCKER_CONF_DIR}/{EDGE_SOCKET_NAME}" if edge_log else None,
        stub_status=f"0.0.0.0:{DOCKER_STATUS_PORT}" if stub_status else None, gateway_secret=gateway_secret,
    )


STATE_DIR_PREFIX = "gpufleet-gateway-"
STATE_DIR_MARKER = "state-dir"  # in the conf dir: where this run dir's state file went (root, private run dir)


def _traversable_by_all(path: Path) -> bool:
    """Every directory from / down to path lets any user through (o+x) and path itself be read (o+r)."""
    p = path.resolve()
    try:
        if not p.stat().st_mode & stat.S_IROTH:
            return False
        return all(d.stat().st_mode & stat.S_IXOTH for d in (p, *p.parents))
    except OSError:
        return False


class LocalNginx:
    """nginx as a child process of `gpufleet up --local`."""

    def __init__(self, run_dir: Path, cfg: GatewayConfig, binary: str | None = None,
                 activator: str | None = None, edge_log: str | None = None, secret: str | None = None) -> None:
        self.secret = secret  # the stack's gateway secret: nginx -> activator, and the reload probe
        self.activator = activator  # host:port of the activator, None: 503 while a pool has no replica
        self.edge_log = edge_log  # host:port the access log goes to over UDP (the edge metrics), None: off
        self.run_dir = run_dir
        self.conf_dir = run_dir / "nginx"
        self.cfg = cfg
        self.binary = binary or find_nginx()
        if self.binary is None:
            raise RuntimeError("nginx not found on PATH; install it (Debian: apt-get install nginx "
                               "libnginx-mod-http-js)")
        self.conf = self.conf_dir / "nginx.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # the master: ours, or adopted from a killed predecessor
        self._state_dir: Path | None = None

    def worker_state_dir(self) -> Path | None:
        """Where nginx's workers can read the file the autoscaler writes each tick (gateway.routing).

        Started as root, nginx runs its workers as `nobody`, who cannot read a run directory below a
        private one (/root, pytest's temp root): then a directory of its own, with an unguessable name
        made by mkdtemp (nothing another user prepared), readable by all (it says only which pools
        overflow), removed at stop, or by the next start on this run dir after a kill. Otherwise None: the
        conf directory does."""
        if os.geteuid() != 0 or _traversable_by_all(self.conf_dir):
            return None
        if self._state_dir is None:
            # the run directory remembers it: a previous run killed before its stop left one to remove
            marker = self.conf_dir / STATE_DIR_MARKER
            with contextlib.suppress(OSError, ValueError):
                old = Path(marker.read_text().strip())
                if old.parent == Path(tempfile.gettempdir()) and old.name.startswith(STATE_DIR_PREFIX) \
                        and not old.is_symlink() and old.is_dir() and old.stat().st_uid == os.geteuid():
                    shutil.rmtree(old, ignore_errors=True)
            self._state_dir = Path(tempfile.mkdtemp(prefix=STATE_DIR_PREFIX))
            self._state_dir.chmod(0o755)
            self.conf_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(marker, f"{self._state_dir}\n")
        return self._state_dir

    def remove_state_dir(self) -> None:
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            (self.conf_dir / STATE_DIR_MARKER).unlink(missing_ok=True)
            self._state_dir = None

    def render_main(self) -> None:
        for d in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (self.run_dir / d).mkdir(parents=True, exist_ok=True)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        njs = find_njs_module()
        text = render_template(
            packaged_template("nginx.conf.j2"),
            mode="local",
            njs_module=njs,
            worker_processes=2,
            run_dir=self.run_dir,
            conf_dir=self.conf_dir,
            foreground=True,
            worker_shutdown_timeout=self.cfg.worker_shutdown_timeout_s,
            access_log=f"{self.run_dir}/nginx-access.log gpufleet",
            listen=self.cfg.listen_host,
            port=self.cfg.port,
            client_max_body_size=self.cfg.client_max_body_size,
            client_keepalive_s=self.cfg.client_keepalive_s,
            activator=self.activator, resolver=None, edge_log=self.edge_log,
            stub_status=f"127.0.0.1:{self.cfg.status_port}" if self.cfg.status_port else None,
            gateway_secret=self.secret,
        )
        atomic_write(self.conf, text)

    def _cmd(self, *extra: str) -> list[str]:
        assert self.binary
        return [self.binary, "-p", str(self.run_dir), "-c", str(self.conf),
                "-e", str(self.run_dir / "nginx-error.log"), *extra]

    def probe(self) -> str | None:
        host = "127.0.0.1" if self.cfg.listen in ("0.0.0.0", "::", "") else self.cfg.listen_host
        with httpx.Client(timeout=1.0) as c:  # a new connection: what a new client would get
            r = c.get(f"http://{host}:{self.cfg.port}/v1/models", headers=probe_headers(self.secret))
            generation: str | None = r.headers.get("x-gpufleet-generation")
            return generation

    def validate(self) -> tuple[bool, str]:
        r = subprocess.run(self._cmd("-t", "-q"), capture_output=True, text=True, timeout=30)
        return r.returncode == 0, r.stderr + r.stdout

    def start(self) -> None:
        ok, out = self.validate()
        if not ok:
            raise RuntimeError(f"nginx config invalid: {out}")
        log_f = open(self.run_dir / "nginx-stdout.log", "ab")  # noqa: SIM115 (lives with the process)
        self.proc = subprocess.Popen(self._cmd(), stdout=log_f, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def adopt(self) -> bool:
        """Keep serving through an autoscaler restart: take over the nginx a killed predecessor left
        running on this run dir (its pid file, and its command line naming our config)."""
        try:
            pid = int((self.run_dir / "nginx.pid").read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(self.conf).encode() not in f.read():
                    return False
        except (OSError, ValueError):
            return False
        self.pid = pid
        return self.alive()

    def reload(self) -> None:
        if not self.alive():
            raise RuntimeError("nginx is not running")
        assert self.pid is not None
        os.kill(self.pid, signal.SIGHUP)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        assert self.pid is not None
        os.kill(self.pid, signal.SIGQUIT)  # graceful: let open streams finish
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


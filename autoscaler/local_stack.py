"""`gpufleet up --local`: nginx, Prometheus, replicas and the loop on this host, in the foreground.

SIGINT/SIGTERM stop everything this stack started. If a previous run was
killed hard, its replicas and its nginx are adopted (clients see nothing of
the restart) and its Prometheus is started again. An nginx that dies is
started again within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

import uvicorn

from autoscaler.activator import Activator, create_activator_app
from autoscaler.admin import AdminServer, create_admin_app
from autoscaler.config import FleetConfig
from autoscaler.controller import Controller
from autoscaler.credentials import SCRAPE_KEY_FILE, admin_token, backend_keys, gateway_secret, keys_source
from autoscaler.gateway.edge import EdgeStats
from autoscaler.gateway.edge import listen as listen_edge
from autoscaler.gateway.nginx import Gateway, LocalNginx, atomic_write
from autoscaler.gateway.render import initial_routes, packaged_template, render_template
from autoscaler.gpus.placement import make_placer
from autoscaler.paths import shared
from autoscaler.prom_sd import TargetsWriter
from autoscaler.runtime.local import LocalRuntime

log = logging.getLogger("gpufleet.local")


def _stop_stale(pid_file: Path, sig: int = signal.SIGQUIT) -> None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, sig)
        log.warning("stopped a stale process %d from a previous run (%s)", pid, pid_file.name)
    except (OSError, ValueError):
        pass


def _spawn(directory: Path, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    """A helper process of the stack: its log and pid file in `directory`; one a killed run left is stopped."""
    directory.mkdir(parents=True, exist_ok=True)
    _stop_stale(directory / f"{name}.pid", signal.SIGTERM)
    log_f = open(directory / f"{name}.log", "ab")  # noqa: SIM115 (lives with the process)
    proc = subprocess.Popen(argv, stdout=log_f, stderr=subprocess.STDOUT, start_new_session=True)
    (directory / f"{name}.pid").write_text(str(proc.pid))
    return proc


def _terminate(proc: subprocess.Popen[bytes] | None, pid_file: Path) -> None:
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    pid_file.unlink(missing_ok=True)


class LocalNginxExporter:
    """Debian's prometheus-nginx-exporter on nginx's stub_status: connections accepted, active, handled."""

    def __init__(self, run_dir: Path, cfg: FleetConfig) -> None:
        self.dir = run_dir / "prometheus"
        self.binary = shutil.which("prometheus-nginx-exporter")
        self.status_port = cfg.gateway.status_port
        self.listen = f"127.0.0.1:{cfg.prometheus.nginx_exporter_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def usable(self) -> bool:
        return self.binary is not None and self.status_port is not None

    def start(self) -> None:
        if not self.usable:
            if self.status_port is not None:
                log.warning("prometheus-nginx-exporter not found: no connection-level gateway metrics "
                            "(apt-get install prometheus-nginx-exporter)")
            return
        assert self.binary is not None
        self.proc = _spawn(self.dir, "nginx-exporter", [
            self.binary, f"-nginx.scrape-uri=http://127.0.0.1:{self.status_port}/stub_status",
            f"-web.listen-address={self.listen}", "-nginx.retries=30", "-nginx.retry-interval=1s"])

    def stop(self) -> None:
        _terminate(self.proc, self.dir / "nginx-exporter.pid")


class LocalPrometheus:
    def __init__(self, run_dir: Path, cfg: FleetConfig, token_file: Path | None = None,
                 nginx_exporter: str | None = None, scrape_key_file: Path | None = None) -> None:
        self.nginx_exporter = nginx_exporter  # host:port to scrape, None: not running
        self.scrape_key_file = scrape_key_file  # what replicas demand of Prometheus on /metrics
        self.dir = run_dir / "prometheus"
        self.cfg = cfg
        self.token_file = token_file  # the admin token, to scrape the autoscaler
        self.binary = shutil.which("prometheus")
        self.proc: subprocess.Popen[bytes] | None = None
        self.targets = self.dir / "targets.json"

    def start(self) -> None:
        if self.binary is None:
            log.warning("prometheus not found on PATH: running without it (apt-get install prometheus)")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        rules = shared("prometheus/rules.yml")
        text = render_template(
            packaged_template("prometheus.yml.j2"), mode="local", scrape_interval="2s",
            rule_files=[str(rules)] if rules.exists() else [],
            autoscaler_target=f"{self.cfg.admin.host}:{self.cfg.admin.port}",
            targets_file=str(self.targets), credentials_file=self.token_file, nginx_exporter=self.nginx_exporter,
            replicas_credentials_file=self.scrape_key_file,
        )
        atomic_write(self.dir / "prometheus.yml", text)
        p = self.cfg.prometheus
        self.proc = _spawn(self.dir, "prometheus", [
            self.binary, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={p.listen}:{p.port}", "--storage.tsdb.retention.time=2d"])

    def stop(self) -> None:
        _terminate(self.proc, self.dir / "prometheus.pid")


async def _supervise(nginx: LocalNginx, controller: Controller, stop: asyncio.Event, every_s: float = 0.2) -> None:
    """nginx died (crashed, killed, restarted by hand): start it again on the files last applied."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if stop.is_set() or nginx.alive():
            continue
        try:
            await asyncio.to_thread(nginx.start)
            controller.event("gateway_restarted", reason="nginx was not running")
        except Exception as e:  # e.g. the old master still holds the port: the next check tries again
            log.error("restarting nginx failed: %s", e)


async def run_local(cfg: FleetConfig, run_dir: Path, stop: asyncio.Event | None = None) -> None:
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    token, token_file = admin_token(cfg, run_dir)
    keys = keys_source(cfg, run_dir)
    secret = gateway_secret(run_dir)
    replica_keys = backend_keys(run_dir, run_dir)
    act = cfg.activator
    edge_port = cfg.gateway.edge_log_port
    admin_host = f"[{cfg.admin.host}]" if ":" in cfg.admin.host else cfg.admin.host
    nginx = LocalNginx(run_dir, cfg.gateway, activator=f"{act.host}:{act.port}" if act.enabled else None,
                       edge_log=f"{admin_host}:{edge_port}" if edge_port else None, secret=secret)
    nginx.render_main()
    adopted = nginx.adopt()
    gateway = Gateway(nginx.conf_dir, cfg.gateway, nginx.validate, nginx.reload, nginx.probe,
                      activator=act.enabled, keys=keys, routing=cfg.routing_table(),
                      state_dir=nginx.worker_state_dir(), backend_keys=replica_keys)
    # adopted: nginx serves the fleet the files describe; the first update reloads it with today's
    gateway.write_initial(keep_existing=adopted, routes=initial_routes(cfg))
    exporter = LocalNginxExporter(run_dir, cfg) if cfg.prometheus.enabled else None
    prom = LocalPrometheus(run_dir, cfg, token_file, nginx_exporter=exporter.listen if exporter and exporter.usable
                           else None, scrape_key_file=run_dir / SCRAPE_KEY_FILE) if cfg.prometheus.enabled else None
    runtime = LocalRuntime(run_dir / "replicas", keys=replica_keys)
    activator = Activator(cfg, secret=secret, keys=replica_keys) if act.enabled else None
    controller = Controller(cfg, runtime, gateway, make_placer(cfg.gpus),
                            TargetsWriter(run_dir / "prometheus" / "targets.json"), activator=activator,
                            keys=replica_keys)
    act_server = AdminServer(uvicorn.Config(create_activator_app(activator), host=act.host, port=act.port,
                                            log_level="warning", access_log=False,
                                            log_config=None)) if activator else None
    edge = EdgeStats(tuple(p.name for p in cfg.pools), cfg.model_names) if edge_port else None
    admin = AdminServer(uvicorn.Config(create_admin_app(controller, token, edge),
                                        host=cfg.admin.host, port=cfg.admin.port,
                                        log_level="warning", access_log=False, log_config=None))
    edge_rx: asyncio.DatagramTransport | None = None
    try:
        # the activator first: the moment nginx listens, a request for a pool with no replica is held
        act_task = asyncio.create_task(act_server.serve(), name="activator") if act_server else None
        if act_server:
            while not act_server.started:
                if act_task is not None and act_task.done():
                    act_task.result()  # e.g. the port is taken: say so
                    raise RuntimeError(f"the activator could not listen on {act.host}:{act.port}")
                await asyncio.sleep(0.02)
        if adopted:
            log.info("adopted the running nginx (pid %s) of a previous run", nginx.pid)
        else:
            nginx.start()
        edge_rx = await listen_edge(edge, cfg.admin.host, edge_port) if edge and edge_port else None
        if exporter:
            exporter.start()
        if prom:
            prom.start()
        admin_task = asyncio.create_task(admin.serve(), name="admin-api")
        loop_task = asyncio.create_task(controller.run(stop), name="control-loop")
        watch_task = asyncio.create_task(_supervise(nginx, controller, stop), name="nginx-supervisor")
        log.info("gpufleet up: gateway http://%s:%d  admin http://%s:%d/status  run dir %s",
                 cfg.gateway.listen, cfg.gateway.port, cfg.admin.host, cfg.admin.port, run_dir)
        done, _ = await asyncio.wait({admin_task, loop_task, asyncio.create_task(stop.wait())},
                                     return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            failed = t.exception()
            if failed is not None:
                raise failed
        stop.set()
        await loop_task
        await watch_task
        admin.should_exit = True
        await admin_task
        if act_server and act_task:
            act_server.should_exit = True
            await act_task
    finally:
        log.info("stopping: replicas, nginx, prometheus")
        if edge_rx is not None:
            edge_rx.close()
        await controller.shutdown_replicas()
        await controller.close()
        if activator:
            await activator.close()
        nginx.stop()
        nginx.remove_state_dir()
        if exporter:
            exporter.stop()
        if prom:
            prom.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

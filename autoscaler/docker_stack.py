"""`gpufleet up --docker`: the autoscaler as the compose stack's sidecar.

It finds its compose project, network and image by inspecting its own
container, writes nginx's generated files and Prometheus' targets into the
volumes it shares with those services, and runs the same controller as the
local stack. SIGTERM (`docker compose down`/`stop`) stops the fleet it runs;
SIGKILL leaves it serving, and the next autoscaler adopts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

import uvicorn

from autoscaler.activator import Activator, create_activator_app
from autoscaler.admin import AdminServer, create_admin_app
from autoscaler.config import FleetConfig
from autoscaler.controller import Controller
from autoscaler.credentials import admin_token, keys_source
from autoscaler.gateway.edge import EdgeStats
from autoscaler.gateway.edge import listen_unix as listen_edge_unix
from autoscaler.gateway.nginx import EDGE_SOCKET_NAME, Gateway, docker_nginx_conf
from autoscaler.gateway.render import initial_routes
from autoscaler.gateway.routing import routing_table
from autoscaler.gpus.placement import make_placer
from autoscaler.prom_sd import TargetsWriter
from autoscaler.runtime.docker import DockerNginx, DockerRuntime

log = logging.getLogger("gpufleet.docker")

# the gateway's own path for its config: nginx -t here reads exactly what the gateway will
NGINX_DIR = Path(os.environ.get("GPUFLEET_NGINX_DIR", "/etc/nginx/gpufleet"))
TARGETS = Path(os.environ.get("GPUFLEET_TARGETS", "/run/gpufleet/prometheus/targets.json"))
# a volume: the admin token (Prometheus mounts it too, read-only) and the gateway's keys file
STATE_DIR = Path(os.environ.get("GPUFLEET_STATE_DIR", "/var/lib/gpufleet"))
ADMIN_DIR = Path(os.environ.get("GPUFLEET_ADMIN_DIR", "/var/lib/gpufleet-admin"))  # Prometheus reads this one


def discover(client: Any) -> tuple[str, str, str]:
    """(compose project, network, image) of this autoscaler, env overriding what inspection finds."""
    project = os.environ.get("GPUFLEET_PROJECT")
    network = os.environ.get("GPUFLEET_NETWORK")
    image = os.environ.get("GPUFLEET_REPLICA_IMAGE")
    try:
        me = client.containers.get(socket.gethostname())
        project = project or me.labels.get("com.docker.compose.project")
        nets = list(me.attrs["NetworkSettings"]["Networks"])
        # GPUFLEET_NETWORK may name the compose network as compose.yaml does ("backend"), without the project
        match = [n for n in nets if network and (n == network or n.endswith(f"_{network}"))]
        network = match[0] if match else (network or nets[0])
        image = image or (me.image.tags[0] if me.image.tags else me.image.id)
    except Exception as e:  # not in a container, or no permission to inspect
        log.warning("could not inspect own container (%s); using environment", e)
    if not (project and network and image):
        raise RuntimeError("set GPUFLEET_PROJECT, GPUFLEET_NETWORK and GPUFLEET_REPLICA_IMAGE, or run the "
                           "autoscaler as a compose service")
    return project, network, image


def nvidia_runtime(client: Any) -> bool:
    try:
        return "nvidia" in (client.info().get("Runtimes") or {})
    except Exception:
        return False


async def run_docker(cfg: FleetConfig) -> None:
    import docker

    token, _ = admin_token(cfg, ADMIN_DIR)
    keys = keys_source(cfg, STATE_DIR)
    client = docker.from_env()
    project, network, image = discover(client)
    log.info("compose project %s, network %s, replica image %s", project, network, image)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    NGINX_DIR.mkdir(parents=True, exist_ok=True)
    nginx = DockerNginx(client, project)
    g = cfg.gateway
    act = cfg.activator
    gateway = Gateway(NGINX_DIR, g, nginx.validate, nginx.reload, nginx.probe,
                      main_conf=lambda: docker_nginx_conf(client_max_body_size=g.client_max_body_size,
                                                          worker_shutdown_timeout=g.worker_shutdown_timeout_s,
                                                          activator=act.enabled,
                                                          edge_log=g.edge_log_port is not None,
                                                          stub_status=g.status_port is not None),
                      activator=act.enabled, keys=keys, routing=routing_table(cfg))
    # Every pool's model, none serving: the gateway, even restarted before the first reload, sends their
    # requests to the activator (which forwards to replicas it is told of), never a 404. Overwriting what
    # an adopted nginx runs on is safe: the files count only at its next reload, which is the first update.
    gateway.write_initial(routes=initial_routes(cfg))
    runtime = DockerRuntime(client, project, network, image, gpus_visible=nvidia_runtime(client))
    activator = Activator(cfg) if act.enabled else None
    controller = Controller(cfg, runtime, gateway, make_placer(cfg.gpus), TargetsWriter(TARGETS),
                            activator=activator)
    edge = EdgeStats.for_fleet(cfg) if g.edge_log_port else None
    # the gateway's nginx sends its access log to a socket in the conf volume both mount
    edge_rx = await listen_edge_unix(edge, NGINX_DIR / EDGE_SOCKET_NAME) if edge else None
    admin = AdminServer(uvicorn.Config(create_admin_app(controller, token, edge), host=cfg.admin.host,
                                        port=cfg.admin.port, log_level="warning", access_log=False))
    admin_task = asyncio.create_task(admin.serve())
    # on the compose network only (not published): the gateway reaches it as autoscaler:8182
    act_server = AdminServer(uvicorn.Config(create_activator_app(activator), host="0.0.0.0", port=8182,
                                            log_level="warning", access_log=False)) if activator else None
    act_task = asyncio.create_task(act_server.serve()) if act_server else None
    try:
        await controller.run(stop)
    finally:
        log.info("stopping the fleet")
        if edge_rx is not None:
            edge_rx.close()
        await controller.shutdown_replicas()
        await controller.close()
        admin.should_exit = True
        await admin_task
        if act_server and act_task and activator:
            act_server.should_exit = True
            await act_task
            await activator.close()

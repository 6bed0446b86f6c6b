"""`gpufleet up --docker`: the autoscaler as the compose stack's sidecar.

It finds its compose project, network and image by inspecting its own
container, writes nginx's generated files and Prometheus' targets into the
volumes it shares with those services, and runs the same controller as the
local stack. SIGTERM (`docker compose down`/`stop`) stops the fleet it runs;
SIGKILL leaves it serving, and the next autoscaler adopts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import uvicorn

from autoscaler.activator import Activator, create_activator_app
from autoscaler.admin import AdminServer, create_admin_app
from autoscaler.config import FleetConfig
from autoscaler.controller import Controller
from autoscaler.credentials import admin_token, backend_keys, gateway_secret, grafana_password, keys_source
from autoscaler.gateway.edge import EdgeStats
from autoscaler.gateway.edge import listen_unix as listen_edge_unix
from autoscaler.gateway.nginx import EDGE_SOCKET_NAME, Gateway, docker_nginx_conf
from autoscaler.gateway.render import initial_routes
from autoscaler.gpus.nvml_agent import PORT as NVML_PORT
from autoscaler.gpus.nvml_agent import NvmlAgent
from autoscaler.gpus.placement import TopologyPlacer, make_placer
from autoscaler.gpus.settings import GpuConfig
from autoscaler.gpus.topology import Link, LinkKind, uniform_topology
from autoscaler.prom_sd import TargetsWriter
from autoscaler.runtime.docker import REPLICA_USER, DockerNginx, DockerRuntime

log = logging.getLogger("gpufleet.docker")

# the gateway's own path for its config: nginx -t here reads exactly what the gateway will
NGINX_DIR = Path(os.environ.get("GPUFLEET_NGINX_DIR", "/etc/nginx/gpufleet"))
TARGETS = Path(os.environ.get("GPUFLEET_TARGETS", "/run/gpufleet/prometheus/targets.json"))
# a volume: the admin token (Prometheus mounts it too, read-only) and the gateway's keys file
STATE_DIR = Path(os.environ.get("GPUFLEET_STATE_DIR", "/var/lib/gpufleet"))
ADMIN_DIR = Path(os.environ.get("GPUFLEET_ADMIN_DIR", "/var/lib/gpufleet-admin"))  # Prometheus reads this one
# the replicas' secrets volume, as the autoscaler mounts it (it writes the pools' secret files there)
SECRETS_DIR = Path(os.environ.get("GPUFLEET_REPLICA_SECRETS_DIR", "/var/lib/gpufleet-replica-secrets"))
# Grafana's admin password file (a volume only Grafana and the autoscaler mount)
GRAFANA_DIR = Path(os.environ.get("GPUFLEET_GRAFANA_DIR", "/var/lib/gpufleet-grafana"))


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


def no_nvidia_runtime(client: Any) -> str | None:
    """Why Docker cannot give containers GPUs (None: it can)."""
    try:
        runtimes = client.info().get("Runtimes") or {}
    except Exception as e:
        return f"docker info failed ({type(e).__name__}: {e})"
    if "nvidia" in runtimes:
        return None
    return (f"Docker has no NVIDIA runtime (docker info lists {', '.join(sorted(runtimes)) or 'none'}); install the "
            "NVIDIA Container Toolkit and run `nvidia-ctk runtime configure --runtime=docker` for GPU replicas")


def helper_kwargs(project: str, network: str, image: str) -> dict[str, Any]:
    """The NVML helper's container: the stack's image, every GPU with the utility capability only, and the
    same least privilege as a replica."""
    from docker.types import DeviceRequest

    return dict(
        image=image, entrypoint=["gpufleet"], command=["nvml-agent", "--port", str(NVML_PORT)],
        name=f"{project}-nvml", network=network, detach=True, restart_policy={"Name": "no"},
        labels={"io.gpufleet.owner": project, "com.docker.compose.project": project,
                "com.docker.compose.service": "nvml", "com.docker.compose.oneoff": "False",
                "com.docker.compose.config-hash": "nvml"},
        environment={"NVIDIA_DRIVER_CAPABILITIES": "utility", "HOME": "/tmp"},
        device_requests=[DeviceRequest(driver="nvidia", count=-1, capabilities=[["utility"]])],
        user=REPLICA_USER, cap_drop=["ALL"], security_opt=["no-new-privileges:true"], read_only=True,
        tmpfs={"/tmp": "rw,nosuid,nodev,size=16m"}, mem_limit="256m", pids_limit=64, stop_signal="SIGTERM",
    )


def start_nvml_helper(client: Any, project: str, network: str, image: str, wait_s: float = 60.0) -> NvmlAgent:
    """Adopt a running helper or start one, and wait until it answers with the topology."""
    import docker.errors

    name = f"{project}-nvml"
    try:
        c = client.containers.get(name)
        if c.status != "running":
            c.remove(force=True)
            raise docker.errors.NotFound(name)
    except docker.errors.NotFound:
        c = client.containers.create(**helper_kwargs(project, network, image))
        try:
            c.start()
        except Exception:
            c.remove(force=True)
            raise
    agent = NvmlAgent(f"http://{name}:{NVML_PORT}")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            agent.topology()
            return agent
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def stop_nvml_helper(client: Any, project: str) -> None:
    with contextlib.suppress(Exception):
        client.containers.get(f"{project}-nvml").remove(force=True)


def docker_placer(cfg: GpuConfig, client: Any, project: str, network: str, image: str) -> TopologyPlacer:
    """The GPUs the compose stack places on: NVML in this container where it has GPUs, else NVML through the
    helper where Docker can give GPUs, else virtual slots; the log says which, and why, in one line."""
    if cfg.source in ("none", "topology"):
        return make_placer(cfg)
    try:
        from autoscaler.gpus.nvml import load_pynvml, read_topology

        nvml = load_pynvml()
        topo = read_topology(nvml)
        if topo.n:
            log.info("GPUs: NVML in the autoscaler's container sees %d", topo.n)
            return TopologyPlacer(topo, nvml, note="NVML in the autoscaler's container")
    except Exception:  # the usual case: the autoscaler's service has no GPU device; the helper reads NVML
        pass
    why = no_nvidia_runtime(client)
    if why is None:
        try:
            agent = start_nvml_helper(client, project, network, image)
            topo = agent.topology()
            if topo.n:
                log.info("GPUs: %d, read through the NVML helper %s-nvml (utility capability only)", topo.n, project)
                return TopologyPlacer(topo, agent=agent, note=f"NVML through the helper container {project}-nvml")
            why = "the NVML helper sees no GPU"
        except Exception as e:
            why = f"the NVML helper did not start ({type(e).__name__}: {e})"
            stop_nvml_helper(client, project)
    if cfg.source == "nvml":
        raise RuntimeError(f"gpus.source is nvml but {why}")
    log.warning("no GPU used: %s. Replicas run CPU-only on %d virtual slots.", why, cfg.virtual_slots)
    return TopologyPlacer(uniform_topology(cfg.virtual_slots, Link(LinkKind.PHB)), note=f"no GPU used: {why}")


async def run_docker(cfg: FleetConfig) -> None:
    import docker

    token, _ = admin_token(cfg, ADMIN_DIR)
    keys = keys_source(cfg, STATE_DIR)
    secret = gateway_secret(STATE_DIR)
    # Prometheus reads its scrape key beside the admin token
    replica_keys = backend_keys(STATE_DIR, ADMIN_DIR)
    if GRAFANA_DIR.is_dir():  # the compose stack's Grafana reads its admin password from here
        path, made = grafana_password(GRAFANA_DIR, os.environ.get("GPUFLEET_GRAFANA_PASSWORD") or None)
        if made:
            log.warning("Grafana admin password generated: `docker compose exec autoscaler cat %s`", path)
    client = docker.from_env()
    project, network, image = discover(client)
    log.info("compose project %s, network %s, replica image %s", project, network, image)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    NGINX_DIR.mkdir(parents=True, exist_ok=True)
    nginx = DockerNginx(client, project, secret=secret)
    g = cfg.gateway
    act = cfg.activator
    gateway = Gateway(NGINX_DIR, g, nginx.validate, nginx.reload, nginx.probe,
                      main_conf=lambda: docker_nginx_conf(client_max_body_size=g.client_max_body_size,
                                                          worker_shutdown_timeout=g.worker_shutdown_timeout_s,
                                                          client_keepalive_s=g.client_keepalive_s,
                                                          activator=act.enabled,
                                                          edge_log=g.edge_log_port is not None,
                                                          stub_status=g.status_port is not None,
                                                          gateway_secret=secret),
                      activator=act.enabled, keys=keys, routing=cfg.routing_table(), backend_keys=replica_keys)
    # Every pool's model, none serving: the gateway, even restarted before the first reload, sends their
    # requests to the activator (which forwards to replicas it is told of), never a 404. Overwriting what
    # an adopted nginx runs on is safe: the files count only at its next reload, which is the first update.
    gateway.write_initial(routes=initial_routes(cfg))
    placer = await asyncio.to_thread(docker_placer, cfg.gpus, client, project, network, image)
    runtime = DockerRuntime(client, project, network, image, gpus_visible=placer.reads_gpus,
                            secrets_dir=SECRETS_DIR, secrets_volume=f"{project}_replica-secrets", keys=replica_keys)
    activator = Activator(cfg, secret=secret, keys=replica_keys) if act.enabled else None
    controller = Controller(cfg, runtime, gateway, placer, TargetsWriter(TARGETS), activator=activator,
                            keys=replica_keys)
    edge = EdgeStats(tuple(p.name for p in cfg.pools), cfg.model_names) if g.edge_log_port else None
    # the gateway's nginx sends its access log to a socket in the conf volume both mount
    edge_rx = await listen_edge_unix(edge, NGINX_DIR / EDGE_SOCKET_NAME) if edge else None
    admin = AdminServer(uvicorn.Config(create_admin_app(controller, token, edge), host=cfg.admin.host,
                                        port=cfg.admin.port, log_level="warning", access_log=False, log_config=None))
    admin_task = asyncio.create_task(admin.serve())
    # on the compose network only (not published): the gateway reaches it as autoscaler:8182
    act_server = AdminServer(uvicorn.Config(create_activator_app(activator), host="0.0.0.0", port=8182,
                                            log_level="warning", access_log=False,
                                            log_config=None)) if activator else None
    act_task = asyncio.create_task(act_server.serve()) if act_server else None
    try:
        await controller.run(stop)
    finally:
        log.info("stopping the fleet")
        if edge_rx is not None:
            edge_rx.close()
        await controller.shutdown_replicas()
        if placer.agent is not None:
            await asyncio.to_thread(stop_nvml_helper, client, project)
        await controller.close()
        admin.should_exit = True
        await admin_task
        if act_server and act_task and activator:
            act_server.should_exit = True
            await act_task
            await activator.close()

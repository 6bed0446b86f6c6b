"""NVML from a helper container, for the compose stack's autoscaler.

A GPU device request on the autoscaler's compose service would make `docker compose up` fail on every host
without the NVIDIA Container Toolkit ("could not select device driver"), so the service has none. Instead,
when Docker reports the NVIDIA runtime, the autoscaler creates one helper container from its own image with
every GPU and the `utility` capability only (NVML: no compute, no GPU memory), running `gpufleet nvml-agent`,
and reads NVML through it: the topology once, GPU readings and the health check every few ticks, as JSON.
The functions behind each answer are the ones the local stack calls on NVML directly.

Without the runtime, or when the helper cannot start, the stack runs CPU-only on virtual slots and says
why in one log line.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx

from autoscaler.gpus.telemetry import GpuReading, read_nvml
from autoscaler.gpus.topology import Topology, topology_from_json, topology_to_json

PORT = 8185


def create_agent_app(nvml: Any) -> Any:
    """The helper's HTTP API over the real NVML (pynvml), each call in a thread (NVML blocks, may hang)."""
    from fastapi import FastAPI

    from autoscaler.gpus.nvml import failing_gpus, read_topology

    app = FastAPI(title="gpufleet nvml-agent", openapi_url=None, docs_url=None, redoc_url=None)
    state: dict[str, Topology] = {}

    async def topo() -> Topology:
        if "topo" not in state:
            state["topo"] = await asyncio.to_thread(read_topology, nvml)
        return state["topo"]

    @app.get("/topology")
    async def topology() -> dict[str, Any]:
        return topology_to_json(await topo())

    @app.get("/readings")
    async def readings() -> list[dict[str, Any]]:
        return [dataclasses.asdict(r) for r in await asyncio.to_thread(read_nvml, nvml, await topo())]

    @app.get("/failing")
    async def failing() -> dict[str, str]:
        t = await topo()
        bad = await asyncio.to_thread(failing_gpus, nvml, t)
        return {t.gpus[i].id: why for i, why in bad.items()}

    return app


class NvmlAgent:
    """The autoscaler's side: the same three answers, over HTTP, each bounded in time."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=self.timeout).raise_for_status().json()

    def topology(self) -> Topology:
        t = topology_from_json(self._get("/topology"))
        return dataclasses.replace(t, source=f"{t.source} (through the NVML helper)")

    def readings(self) -> list[GpuReading]:
        return [GpuReading(**r) for r in self._get("/readings")]

    def failing(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._get("/failing").items()}


def serve(host: str = "0.0.0.0", port: int = PORT) -> None:
    import uvicorn

    from autoscaler.gpus.nvml import load_pynvml

    uvicorn.run(create_agent_app(load_pynvml()), host=host, port=port, log_level="warning", access_log=False,
                log_config=None)

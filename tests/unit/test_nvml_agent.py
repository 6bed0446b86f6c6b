"""NVML through the compose stack's helper: the same answers as NVML read here, over real HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from autoscaler.gpus.nvml import read_topology
from autoscaler.gpus.nvml_agent import NvmlAgent, create_agent_app
from autoscaler.gpus.placement import TopologyPlacer
from autoscaler.gpus.telemetry import read_nvml
from autoscaler.gpus.topology import load_topology_file
from tests.fake_nvml import FakeNvml
from tests.helpers import free_port, wait_for

DUMP = Path(__file__).resolve().parents[1] / "fixtures/topology/hgx-8xh100-sxm-nv18-aws-p5.txt"


@pytest.fixture
def helper() -> Iterator[tuple[FakeNvml, NvmlAgent]]:
    fake = FakeNvml(load_topology_file(DUMP))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_agent_app(fake), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    agent = NvmlAgent(f"http://127.0.0.1:{port}", timeout=5)
    wait_for(lambda: agent.topology(), 10, "the helper answering")
    yield fake, agent
    server.should_exit = True
    t.join(5)


def test_the_helper_answers_what_nvml_says_here(helper):
    fake, agent = helper
    here = read_topology(fake)
    there = agent.topology()
    assert [g.id for g in there.gpus] == [g.id for g in here.gpus] and len(here.gpus) == 8
    assert there.links == here.links and "through the NVML helper" in there.source
    assert agent.readings() == read_nvml(fake, here)
    assert agent.failing() == {}
    fake.lost.add(3)  # a GPU falls off the bus
    assert list(agent.failing()) == [here.gpus[3].id]


def test_a_placer_on_the_helper_reads_and_cordons_through_it(helper):
    fake, agent = helper
    placer = TopologyPlacer(agent.topology(), agent=agent, host_cpus=set(range(192)))
    assert placer.reads_gpus and len(placer.readings()) == 8
    fake.lost.add(5)
    assert list(placer.failing()) == [placer.topo.gpus[5].id]


def test_a_helper_that_hangs_is_a_bounded_failure_not_a_hang():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()  # accepts, never answers
    try:
        agent = NvmlAgent(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017  (httpx's timeout)
            agent.failing()
        assert time.monotonic() - t0 < 5
    finally:
        s.close()

"""The activator answers nginx only: a request without the stack's gateway secret gets a 403 and reaches no
replica (it would forward it with no API key asked). With the secret, it holds and forwards as before."""

from __future__ import annotations

import threading

import uvicorn
from fastapi.testclient import TestClient

from autoscaler.activator import Activator, create_activator_app
from autoscaler.config import parse_config
from inference.app import create_app
from inference.engines import PROFILES, SimEngine
from tests.helpers import free_port, wait_for

CFG = parse_config({"pools": [{"name": "chat", "model": "m", "min_replicas": 0, "hold_timeout_s": 5}]})
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_without_the_gateways_secret_nothing_is_held_or_forwarded():
    act = Activator(CFG, secret="s3cret")
    with TestClient(create_activator_app(act)) as c:
        for headers in ({}, {"X-Gpufleet-Gateway": "wrong"}, {"X-Gpufleet-Gateway": "s3cre"},
                        {"x-gpufleet-gateway": "s3cret "}):
            r = c.post("/v1/chat/completions", json=CHAT, headers={"X-Gpufleet-Pool": "chat", **headers})
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (headers, r.text)
            assert act.held["chat"] == 0 and act.forwarded["chat"] == 0


def test_with_it_a_request_is_forwarded_to_a_serving_replica_which_the_answer_names():
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(SimEngine(PROFILES["tiny"].with_overrides(load_time_s=0)), "m"),
                                           host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{port}"
        act = Activator(CFG, secret="s3cret")
        act.publish({"chat": [url]}, {url: "r-chat-1"})
        with TestClient(create_activator_app(act)) as c:
            wait_for(lambda: c.post("/v1/chat/completions", json=CHAT, headers={
                "X-Gpufleet-Pool": "chat", "X-Gpufleet-Gateway": "s3cret"}).status_code == 200, 10, "served")
            r = c.post("/v1/chat/completions", json=CHAT, headers={"X-Gpufleet-Pool": "chat",
                                                                   "X-Gpufleet-Gateway": "s3cret"})
            assert r.status_code == 200 and r.headers["x-gpufleet-replica"] == "r-chat-1"
            assert act.forwarded["chat"] >= 2
    finally:
        server.should_exit = True
        t.join(5)

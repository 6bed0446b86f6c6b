"""The keys replicas demand: one per pool from the stack's secret, given to each engine where that engine reads
it, presented by nginx per pool, and checked by the sim engine as the real engines check theirs."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from autoscaler.backend_auth import BackendKeys, auth_headers
from autoscaler.config import parse_config
from autoscaler.gateway.render import PoolRoute, render_gateway
from autoscaler.loop.lifecycle import replica_spec
from autoscaler.runtime.base import engine_argv, replica_env
from autoscaler.runtime.docker import create_kwargs

KEYS = BackendKeys("s3cret-for-tests")


def test_each_pool_has_its_own_key_the_same_after_a_restart_and_none_is_the_scrape_key():
    again = BackendKeys("s3cret-for-tests")
    keys = {p: KEYS.pool_key(p) for p in ("chat", "big", "chat-2")}
    assert keys == {p: again.pool_key(p) for p in keys}  # a restarted autoscaler and its adopted replicas agree
    assert len(set(keys.values()) | {KEYS.scrape_key}) == 4
    assert BackendKeys("another-stack").pool_key("chat") != keys["chat"]
    assert all(re.fullmatch(r"gfb-[0-9a-f]{48}", k) for k in keys.values())
    assert "s3cret" not in repr(KEYS)
    assert auth_headers(KEYS, "chat") == {"Authorization": f"Bearer {keys['chat']}"}
    assert auth_headers(None, "chat") == {}


def _cfg(engine: str, **over: object):
    pool = {"name": "p1", "model": "m", "engine": engine, **over}
    if engine == "command":
        pool["command"] = ["my-server", "--port", "{port}"]
    return parse_config({"pools": [pool]}).pools[0]


@pytest.mark.parametrize(("engine", "env", "args"), [
    ("sim", {"GPUFLEET_API_KEY": "{k}", "GPUFLEET_METRICS_KEY": "{s}"}, []),
    ("vllm", {"VLLM_API_KEY": "{k}"}, []),
    ("llamacpp", {"LLAMA_API_KEY": "{k},{s}"}, []),
    ("sglang", {}, ["--api-key", "{k}"]),
    ("tgi", {}, []),
    ("command", {}, []),
])
def test_each_engine_gets_its_pools_key_where_it_reads_it_and_only_with_keys(engine, env, args):
    spec = replica_spec(_cfg(engine), "active", ())
    fill = {"{k}": KEYS.pool_key("p1"), "{s}": KEYS.scrape_key}
    want_env = {k: v.replace("{k}", fill["{k}"]).replace("{s}", fill["{s}"]) for k, v in env.items()}
    got = replica_env(spec, "/secrets", KEYS)
    assert {k: got[k] for k in got if k in want_env or "KEY" in k} == want_env
    argv = engine_argv(spec, KEYS, model="m", port=1, host="h", replica_id="r")
    base = engine_argv(spec, None, model="m", port=1, host="h", replica_id="r")
    assert argv[len(base):] == [fill.get(a, a) for a in args] and argv[:len(base)] == base
    # without keys (a replica started by hand, a test): no key anywhere, and no placeholder left in
    bare = replica_env(spec, "/secrets", None)
    assert not any("KEY" in k for k in bare) and "{api_key}" not in str(bare) + str(base)


def test_the_key_goes_into_the_containers_environment_never_the_secrets_volume():
    spec = replica_spec(_cfg("vllm"), "active", ())
    kw = create_kwargs(spec, "r-p1-1", project="gf", network="gf_backend", default_image="img", gpus_visible=False,
                       secrets_volume="gf_replica-secrets", keys=KEYS)
    assert kw["environment"]["VLLM_API_KEY"] == KEYS.pool_key("p1")
    assert KEYS.pool_key("p1") not in str(kw["entrypoint"]) + str(kw["command"]) + str(kw.get("mounts"))


def test_nginx_presents_each_pools_key_to_its_replicas_and_none_without_keys():
    routes = [PoolRoute("chat", "m1", ("10.0.0.2:8000",), replica_ids=("r-chat-1",)),
              PoolRoute("big-one", "m2", ())]
    conf = render_gateway(routes, backend_keys=KEYS)["replicas.conf"]
    block = conf[conf.index("map $gf_pool $gf_backend_auth"):]
    assert f'"chat" "Bearer {KEYS.pool_key("chat")}";' in block
    assert f'"big_one" "Bearer {KEYS.pool_key("big-one")}";' in block  # $gf_pool is the upstream's name
    assert 'default "";' in block
    bare = render_gateway(routes)["replicas.conf"]
    assert "map $gf_pool $gf_backend_auth" in bare and "Bearer" not in bare
    # a new key is a new generation: nginx is reloaded with it
    assert render_gateway(routes, backend_keys=KEYS)["routes.js"] != render_gateway(routes)["routes.js"]


def _sim_client(api_keys: tuple[str, ...], metrics_keys: tuple[str, ...] = ()) -> TestClient:
    from inference.app import create_app
    from inference.auth import require_keys
    from inference.engines import PROFILES, SimEngine

    return TestClient(require_keys(create_app(SimEngine(PROFILES["tiny"]), "m1"), api_keys, metrics_keys))


def test_the_sim_engine_demands_a_key_on_every_route_but_health_and_the_metrics_key_opens_metrics_only():
    body = {"model": "m1", "prompt": "x", "max_tokens": 1}
    with _sim_client(("k1", "k2"), ("mk",)) as c:
        from tests.helpers import wait_for

        wait_for(lambda: c.get("/health").status_code == 200, 10, "loaded")
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic k1"},
                        {"Authorization": "Bearer "}, {"Authorization": "Bearer mk"}):
            r = c.post("/v1/completions", json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", headers
            assert r.headers["www-authenticate"] == "Bearer"
            assert c.post("/sleep", headers=headers).status_code == 401
            assert c.get("/is_sleeping", headers=headers).status_code == 401
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer mk"}).status_code == 200
        for key in ("k1", "k2"):
            assert c.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
            assert c.get("/metrics", headers={"Authorization": f"bearer {key}"}).status_code == 200
    with _sim_client(()) as c:  # no key given: keyless, as a bare vLLM
        wait_for(lambda: c.get("/health").status_code == 200, 10, "loaded")
        assert c.post("/v1/completions", json=body).status_code == 200


def test_the_keys_come_from_the_environment_the_autoscaler_sets():
    from inference.auth import keys_from_env

    assert keys_from_env({"GPUFLEET_API_KEY": "a, b,", "GPUFLEET_METRICS_KEY": "m"}) == (("a", "b"), ("m",))
    assert keys_from_env({}) == ((), ())

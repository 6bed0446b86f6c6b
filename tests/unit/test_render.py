from __future__ import annotations

import json
import re

import pytest

from autoscaler.gateway.render import PoolRoute, files_generation, render_gateway
from autoscaler.prom_sd import targets_document
from autoscaler.runtime.base import Replica


def test_upstreams_only_for_serving_pools_with_least_conn_and_keepalive():
    files = render_gateway([PoolRoute("chat-a", "m1", ("127.0.0.1:1001", "127.0.0.1:1002")),
                            PoolRoute("idle", "m2", ())])
    conf = files["upstreams.conf"]
    assert "upstream pool_chat_a {" in conf and "upstream pool_idle" not in conf
    assert conf.count("server 127.0.0.1:100") == 2
    assert "least_conn;" in conf and re.search(r"keepalive \d+;", conf)


def test_routes_table_maps_models_serving_and_fallbacks():
    files = render_gateway([PoolRoute("a", "m1", ("h:1",), fallback=("b",)), PoolRoute("b", "m2", ())])
    body = files["routes.js"].split("export default ", 1)[1].rstrip().rstrip(";")
    table = json.loads(body)
    generation = table.pop("generation")
    assert table == {"routes": {"m1": "a", "m2": "b"}, "models": {"a": "m1", "b": "m2"}, "rules": [],
                     "serving": {"a": True, "b": False}, "fallback": {"a": [{"pool": "b", "max_tokens": None}]},
                     "activator": False, "auth": True, "keys": {}}
    assert files_generation(files) == generation


def test_each_config_has_its_own_generation():
    one = render_gateway([PoolRoute("a", "m1", ("h:1",))])
    two = render_gateway([PoolRoute("a", "m1", ("h:1", "h:2"))])
    assert files_generation(one) != files_generation(two)
    assert files_generation(one) == files_generation(render_gateway([PoolRoute("a", "m1", ("h:1",))]))


def test_model_names_are_escaped_in_routes_js():
    files = render_gateway([PoolRoute("a", 'evil"</script>\\', ("h:1",))])
    body = files["routes.js"].split("export default ", 1)[1].rstrip().rstrip(";")
    assert json.loads(body)["routes"] == {'evil"</script>\\': "a"}


def test_broken_user_template_raises(tmp_path):
    t = tmp_path / "u.j2"
    t.write_text("{% for p in pools %}")
    with pytest.raises(Exception):  # noqa: B017 - any Jinja error: the gateway keeps the last good file
        render_gateway([], t)


def test_file_sd_document_shape():
    r = Replica(id="r-1", pool="chat", model="m", role="active", target_role="active",
                url="http://127.0.0.1:5", upstream="127.0.0.1:5", gpus=(), config_hash="h",
                created_at=0, alive=True)
    dead = Replica(**{**r.__dict__, "id": "r-2", "alive": False})
    assert targets_document([r, dead]) == [
        {"targets": ["127.0.0.1:5"], "labels": {"pool": "chat", "replica": "r-1", "role": "active",
                                                "model": "m"}}]


def test_gateway_image_files_match_the_templates():
    """nginx/ is rendered from the same templates as the local stack: `python nginx/render.py` after a change."""
    from pathlib import Path

    from autoscaler.gateway.nginx import docker_nginx_conf

    root = Path(__file__).resolve().parent.parent.parent / "nginx"
    assert (root / "nginx.conf").read_text() == docker_nginx_conf()
    for name, text in render_gateway([], activator=True).items():
        assert (root / "initial" / name).read_text() == text

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoscaler.config import ConfigError, load_config, parse_config
from autoscaler.gpus.placement import make_placer


def test_default_config_is_valid_and_cpu_only():
    cfg = load_config(None)
    # no NVML asked for: each replica holds one of the virtual slots (what the GPU dashboards show)
    assert cfg.pools[0].gpus_per_replica == 1 and cfg.gpus.source == "none"
    assert make_placer(cfg.gpus).virtual


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"pools": []}, "pools: "),
        ({"pools": [{"name": "a", "model": "m", "max_replicas": 0}]}, "pools[0].max_replicas"),
        ({"pools": [{"name": "a", "model": "m", "min_replicas": 3, "max_replicas": 2}]},
         "max_replicas (2) must be >= min_replicas (3)"),
        ({"pools": [{"name": "A b", "model": "m"}]}, "pools[0].name"),
        ({"pools": [{"name": "a", "model": "m", "targets": {}}]}, "set at least one target"),
        ({"pools": [{"name": "a", "model": "m", "warm_pool": {"mn": 1}}]}, "pools[0].warm_pool.mn"),
        ({"pools": [{"name": "a", "model": "m", "sim": {"profile": "huge"}}]}, "unknown sim profile"),
        ({"pools": [{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]}, "repeated: a"),
        ({"pools": [{"name": "a", "model": "m", "fallback": ["zz"]}]}, "fallback 'zz'"),
        ({"pools": [{"name": "a", "model": "m", "behavior": {"scale_up": {"policies": []}}}]},
         "pools[0].behavior.scale_up.stabilization_s"),
        ({"gpus": {"source": "topology"}, "pools": [{"name": "a", "model": "m"}]}, "topology_file"),
        ([1, 2], "expected a mapping"),
        # each of these validated, then failed at run time
        ({"pools": [{"name": "chat\n", "model": "m"}]}, "pools[0].name"),
        ({"pools": [{"name": "a", "model": "m\nx"}]}, "pools[0].model"),
        ({"pools": [{"name": "a", "model": "m", "engine": "command", "command": ["serve", "{model}"]}]},
         "must contain {port}"),
        ({"gateway": {"client_max_body_size": "1m; include /etc/passwd"}, "pools": [{"name": "a", "model": "m"}]},
         "gateway.client_max_body_size"),
        ({"gateway": {"listen": "0.0.0.0:80; x"}, "pools": [{"name": "a", "model": "m"}]}, "gateway.listen"),
        ({"admin": {"host": "my host"}, "pools": [{"name": "a", "model": "m"}]}, "admin.host"),
        # several models on one host
        ({"pools": [{"name": "a", "model": "m", "aliases": ["n"]}, {"name": "b", "model": "n"}]},
         "pool 'a': alias 'n' is already the model or an alias of pool 'b'"),
        ({"pools": [{"name": "a", "model": "m", "aliases": ["x"]}, {"name": "b", "model": "n", "aliases": ["x"]}]},
         "pool 'b': alias 'x'"),
        ({"pools": [{"name": "a", "model": "m", "aliases": [" x"]}]}, "pools[0].aliases"),
        ({"pools": [{"name": "a", "model": "m", "saturation": {"waiting_per_replica": 4}}]},
         "saturation needs a fallback"),
        ({"pools": [{"name": "a", "model": "m", "fallback": [{"pool": "b", "max_tokens": 0}]},
                    {"name": "b", "model": "n"}]}, "pools[0].fallback[0].max_tokens"),
        ({"pools": [{"name": "a", "model": "m", "fallback": ["b"],
                     "saturation": {"waiting_per_replica": 2, "clear_below": 3}}, {"name": "b", "model": "n"}]},
         "clear_below (3.0) must be <= waiting_per_replica (2.0)"),
        ({"pools": [{"name": "a", "model": "m", "priority": 10**6}]}, "pools[0].priority"),
        ({"pools": [{"name": "a", "model": "m", "hold_timeout_s": 600}]},
         "hold_timeout_s (600) is longer than gateway.worker_shutdown_timeout_s (240)"),
        ({"routing": {"rules": [{"name": "r", "match": {"tiers": ["p"]}, "pool": "zz"}]},
          "pools": [{"name": "a", "model": "m"}]}, "routing.rules[0] (r): pool 'zz' is not a pool"),
        ({"routing": {"rules": [{"name": "r", "match": {"models": ["nope"]}, "pool": "a"}]},
          "pools": [{"name": "a", "model": "m"}]}, "model 'nope' is no pool's model or alias"),
        ({"routing": {"rules": [{"name": "r", "match": {}, "pool": "a"}]}, "pools": [{"name": "a", "model": "m"}]},
         "a rule matches on at least one of"),
        ({"routing": {"rules": [{"name": "r", "match": {"headers": {"X Bad": "1"}}, "pool": "a"}]},
          "pools": [{"name": "a", "model": "m"}]}, "routing.rules[0].match.headers"),
        ({"routing": {"rules": [{"name": "r", "match": {"tiers": ["p"]}, "pool": "a"},
                                {"name": "r", "match": {"tiers": ["q"]}, "pool": "a"}]},
          "pools": [{"name": "a", "model": "m"}]}, "rule names must be unique"),
    ],
)
def test_bad_config_names_the_field(data, needle):
    with pytest.raises(ConfigError) as e:
        parse_config(data, "fleet.yaml")
    assert needle in str(e.value)
    assert "fleet.yaml" in str(e.value)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "f.yaml"
    bad.write_text("pools: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_cli_refuses_to_start_on_bad_config(tmp_path):
    bad = tmp_path / "fleet.yaml"
    bad.write_text("pools:\n  - name: chat\n    model: m\n    max_replicas: -1\n")
    r = subprocess.run([sys.executable, "-m", "autoscaler.cli", "up", "--local", "--config", str(bad),
                        "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "pools[0].max_replicas" in r.stderr and "not starting" in r.stderr
    assert not (tmp_path / "run").exists(), "nothing may start on a bad config"


def test_config_hash_changes_with_what_a_replica_runs():
    a = parse_config({"pools": [{"name": "a", "model": "m"}]}).pools[0]
    b = parse_config({"pools": [{"name": "a", "model": "m", "max_replicas": 9}]}).pools[0]
    c = parse_config({"pools": [{"name": "a", "model": "m2"}]}).pools[0]
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_what_validates_starts_braces_in_argv_and_model_are_literal():
    from autoscaler.runtime.base import fill_argv

    cfg = parse_config({"pools": [
        {"name": "a", "model": "org/m{v2}", "engine": "command",
         "command": ["serve", "--model", "{model}", "--port", "{port}", "--extra", '{"json": 1}', "{nope}"]},
        {"name": "b", "model": "m{port}"}]})
    argv = fill_argv(cfg.pools[0].engine_spec.argv, model=cfg.pools[0].model, port=9, host="h", replica_id="r")
    assert argv == ["serve", "--model", "org/m{v2}", "--port", "9", "--extra", '{"json": 1}', "{nope}"]
    sim = fill_argv(cfg.pools[1].engine_spec.argv, model=cfg.pools[1].model, port=9, host="h", replica_id="r")
    assert sim[sim.index("--model") + 1] == "m{port}", "a value is never re-scanned for placeholders"


@pytest.mark.parametrize(("content", "needle"), [
    (b"pools:\n  - name: a\n    model: \xff\xfe\n", "not UTF-8"),
    (b"tick_s: " + b"9" * 5000 + b"\npools: [{name: a, model: m}]\n", "cannot read"),
    (b"gpus: {source: topology, topology_file: nowhere.txt}\npools: [{name: a, model: m}]\n",
     "gpus.topology_file"),
    (b"gateway: {upstream_template: t.j2}\npools: [{name: a, model: m}]\n", "gateway.upstream_template"),
])
def test_files_a_config_names_are_checked_and_odd_bytes_are_one_line(tmp_path, content, needle):
    (tmp_path / "t.j2").write_text("{% for p in pools %}{{ p.nope.deeper }}{% endfor %}")
    f = tmp_path / "fleet.yaml"
    f.write_bytes(content)
    with pytest.raises(ConfigError, match=needle):
        load_config(f)
    r = subprocess.run([sys.executable, "-m", "autoscaler.cli", "validate", str(f)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and needle in r.stderr, r.stderr


def test_the_fleet_yaml_shown_in_the_readme_is_valid():
    """README's fleet.yaml reference is what users copy: it must validate as shown."""
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parent.parent.parent / "README.md").read_text()
    section = readme.split("## fleet.yaml", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    cfg = parse_config(yaml.safe_load(block.group(1)), "README.md")
    assert cfg.pools and cfg.routing.rules, "the reference shows the routing rules"


def test_fallback_short_and_long_forms_and_the_routing_table():

    cfg = parse_config({"pools": [
        {"name": "a", "model": "m", "aliases": ["chat"], "fallback": ["b", {"pool": "c", "max_tokens": 64}]},
        {"name": "b", "model": "n"}, {"name": "c", "model": "o"}],
        "routing": {"rules": [{"name": "t", "match": {"models": ["chat"], "headers": {"X-Tier": "gold"},
                                                       "prompt_tokens_over": 100}, "pool": "b"}]}})
    assert cfg.pool("a").fallback_pools == ("b", "c")
    t = cfg.routing_table()
    assert t["routes"] == {"m": "a", "chat": "a", "n": "b", "o": "c"}
    assert t["fallback"] == {"a": [{"pool": "b", "max_tokens": None}, {"pool": "c", "max_tokens": 64}]}
    assert t["rules"] == [{"name": "t", "pool": "b", "models": ["chat"], "tiers": [], "headers": {"x-tier": "gold"},
                           "over": 100, "under": None}], "header names compared as njs sees them: lower case"


def test_validate_says_what_it_understood_of_a_multi_model_fleet():
    root = Path(__file__).resolve().parent.parent.parent
    r = subprocess.run([sys.executable, "-m", "autoscaler.cli", "validate", str(root / "examples/multi-model.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].startswith("  pool large: priority 100") and "to small (max_tokens 256)" in lines[1]
    assert "  rule batch-by-header: header x-workload=batch -> pool batch" in lines


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")) + [
    Path(__file__).resolve().parents[2] / "compose/fleet.yaml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_shipped_fleet_validates_and_says_what_its_engines_lack(path):
    r = subprocess.run([sys.executable, "-m", "autoscaler.cli", "validate", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cfg = load_config(path)
    for p in cfg.pools:
        if p.engine not in ("sim", "command"):
            line = next(x for x in r.stdout.splitlines() if x.startswith(f"  pool {p.name}: engine {p.engine}"))
            assert all(s in line for s in p.engine_spec.missing_signals()), line


def test_the_real_engine_examples_mean_what_they_say():
    root = Path(__file__).resolve().parents[2]
    vllm = load_config(root / "examples/vllm.yaml")
    big = vllm.pool("big").engine_spec
    assert big.argv[:3] == ("vllm", "serve", "Qwen/Qwen2.5-32B-Instruct") and "--tensor-parallel-size" in big.argv
    assert big.argv[big.argv.index("--tensor-parallel-size") + 1] == "2" and big.shm_size == "16g"
    chat = vllm.pool("chat").engine_spec
    assert chat.sleep and "--enable-sleep-mode" in chat.argv and chat.env["VLLM_SERVER_DEV_MODE"] == "1"
    assert chat.volumes == {"weights": "/root/.cache/huggingface"}
    cpu = load_config(root / "examples/cpu-real-engine.yaml").pools[0]
    assert cpu.executable == str(root / "build/llama-server/llama-server") or not (root / "build/llama-server").exists()


def test_every_image_the_stack_builds_is_never_pulled_from_a_registry_under_its_name():
    """Without pull_policy, compose pulls an image of the same name first (and would run it as ours)."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    base = yaml.safe_load((root / "compose/compose.yaml").read_text())["services"]
    offline = yaml.safe_load((root / "compose/compose.offline.yaml").read_text())["services"]
    # compose merges the override into the base, service by service
    merged = {n: {**base.get(n, {}), **offline.get(n, {})} for n in base}
    for name, services in (("online", base), ("offline", merged)):
        built = {n: s for n, s in services.items() if "build" in s}
        assert built, name
        assert {n: s.get("pull_policy") for n, s in built.items()} == {n: "build" for n in built}, name

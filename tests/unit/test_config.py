from __future__ import annotations

import subprocess
import sys

import pytest

from autoscaler.config import ConfigError, load_config, parse_config


def test_default_config_is_valid_and_cpu_only():
    cfg = load_config(None)
    assert cfg.pools[0].gpus_per_replica == 0 and cfg.gpus.source == "none"


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

"""API keys: the keys file's errors, what is rendered for nginx (and what never is), reloads on change."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autoscaler.config import ConfigError, load_config
from autoscaler.gateway.access import (
    AccessPolicy,
    KeyEntry,
    KeysError,
    KeysSource,
    ensure_default_keys,
    ensure_secret,
    hash_key,
    load_keys,
    render_access,
)
from autoscaler.gateway.nginx import LocalNginx
from autoscaler.gateway.render import PoolRoute, render_gateway
from tests.helpers import ROOT, require_host_binaries

PLAIN = "gf-plain-secret-0123456789"


def _write(path: Path, keys: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"keys": keys}))
    return path


@pytest.mark.parametrize(("keys", "says"), [
    ([{"name": "Alice", "key": PLAIN}], "keys[0].name"),
    ([{"name": "a", "key": PLAIN, "sha256": hash_key(PLAIN)}], "exactly one of `sha256`"),
    ([{"name": "a"}], "exactly one of `sha256`"),
    ([{"name": "a", "sha256": "abc"}], "keys[0].sha256"),
    ([{"name": "a", "key": "short"}], "keys[0].key"),
    ([{"name": "a", "key": PLAIN + " x"}], "no spaces"),
    ([{"name": "a", "key": PLAIN}, {"name": "a", "key": PLAIN + "2"}], "each name must be unique (a)"),
    ([{"name": "a", "key": PLAIN}, {"name": "b", "sha256": hash_key(PLAIN)}], "each key must be unique"),
    ([{"name": "a", "key": PLAIN, "requests_per_s": 0}], "keys[0].requests_per_s"),
    ([{"name": "a", "key": PLAIN, "colour": "red"}], "keys[0].colour"),
    ([], "keys"),
])
def test_a_bad_keys_file_names_the_entry_and_field(tmp_path, keys, says):
    with pytest.raises(KeysError) as e:
        load_keys(_write(tmp_path / "keys.yaml", keys))
    assert says in str(e.value) and str(tmp_path / "keys.yaml") in str(e.value)
    assert PLAIN not in str(e.value)  # an error never repeats a secret


def test_unreadable_or_shapeless_keys_files_are_one_line(tmp_path):
    for text, says in (("[1, 2]", "expected a mapping"), ("keys: [", "not valid YAML")):
        (tmp_path / "k.yaml").write_text(text)
        with pytest.raises(KeysError, match=says):
            load_keys(tmp_path / "k.yaml")
    with pytest.raises(KeysError, match="cannot read"):
        load_keys(tmp_path / "missing.yaml")


def test_rendered_files_hold_hashes_and_names_never_a_key(tmp_path):
    keys = load_keys(_write(tmp_path / "k.yaml", [
        {"name": "alice", "key": PLAIN, "tier": "premium", "models": ["m1"], "requests_per_s": 0.5,
         "burst": 3, "concurrent": 2},
        {"name": "default", "sha256": hash_key("gf-other-secret-xxxxxxxx")},
    ]))
    files = render_gateway([PoolRoute("p", "m1", ("h:1",), replica_ids=("r-p-1",))],
                           access=AccessPolicy(True, keys, global_requests_per_s=50, global_concurrent=9))
    text = "".join(files.values())
    assert PLAIN not in text and "gf-other-secret" not in text
    table = json.loads(files["routes.js"].split("export default ", 1)[1].rstrip().rstrip(";"))
    assert table["auth"] is True
    assert table["keys"][hash_key(PLAIN)] == {"name": "alice", "tier": "premium", "models": ["m1"]}
    http, loc = files["access.conf"], files["access-location.conf"]
    assert "rate=30r/m" in http  # 0.5/s: nginx wants whole requests per minute then
    assert "rate=50r/s" in http and "limit_conn gf_all_conn 9;" in loc
    assert "limit_req zone=gf_k0_rate burst=3 nodelay;" in loc and "limit_conn gf_k0_conn 2;" in loc
    assert r"\default" in http  # a key named like a map keyword is escaped
    assert '"~(^|, )h:1$" "r-p-1";' in files["replicas.conf"]  # the last replica tried


def test_auth_on_refuses_a_keyless_request_before_its_body_and_before_the_limits_count_it():
    loc = render_access(AccessPolicy(True, (KeyEntry(name="a", key=PLAIN),)))["location"]
    first_limit = loc.index("limit_req")
    assert loc.index('if ($http_authorization = "")') < first_limit and loc.index('if ($gf_key = "")') < first_limit
    bodies = re.findall(r"return 401 '([^']*)';", loc)
    codes = [json.loads(b)["error"]["code"] for b in bodies]  # what nginx sends is the OpenAI shape
    assert codes == ["missing_api_key", "invalid_api_key"] and not any("\\" in b for b in bodies)
    # on the 401s only, not on every answer of the location
    assert loc.count("add_header WWW-Authenticate Bearer always;") == 2
    # the autoscaler's reload probe (no key) still learns which config nginx serves
    assert loc.count("add_header X-Gpufleet-Generation $gf_generation always;") == 2
    assert loc.rindex("add_header WWW-Authenticate") < loc.rindex("}") < first_limit
    # a key over its own limit is refused before it counts against the gateway-wide ones
    assert loc.index("zone=gf_k0_rate") < loc.index("zone=gf_all_rate")
    assert loc.index("gf_k0_conn") < loc.index("gf_all_conn")


def test_auth_off_renders_no_keys_but_keeps_the_global_limits():
    acc = render_access(AccessPolicy(False, (KeyEntry(name="a", key=PLAIN),)))
    assert acc["table"] == {"auth": False, "keys": {}}
    assert "gf_k0" not in acc["http"] and "gf_all_rate" in acc["location"]


def test_rendered_access_passes_nginx_t(tmp_path):
    """What nginx itself accepts: the tricky names, fractional rates, auth on and off."""
    require_host_binaries()
    from autoscaler.gateway.settings import GatewayConfig

    keys = tuple(KeyEntry(name=n, key=f"{PLAIN}-{n}", requests_per_s=r)
                 for n, r in (("default", 1), ("hostnames", 0.25), ("include", 5), ("volatile", 100)))
    for policy in (AccessPolicy(True, keys), AccessPolicy(False)):
        ng = LocalNginx(tmp_path / str(policy.enabled), GatewayConfig(port=18080), secret="sEcr3t-x_y",
                        activator="127.0.0.1:9", edge_log="127.0.0.1:9")
        ng.render_main()
        for name, text in render_gateway([PoolRoute("p", "m", ("127.0.0.1:1",), replica_ids=("r",))],
                                         activator=True, access=policy).items():
            (ng.conf_dir / name).write_text(text)
        (ng.conf_dir / "gateway.js").write_text((ROOT / "autoscaler" / "templates" / "gateway.js").read_text())
        ok, out = ng.validate()
        assert ok, out


def test_keys_source_rereads_on_change_and_keeps_the_last_good(tmp_path):
    path = _write(tmp_path / "k.yaml", [{"name": "a", "key": PLAIN}])
    src = KeysSource(True, path)
    assert [k.name for k in src.policy.keys] == ["a"] and src.poll() is None
    _write(path, [{"name": "a", "key": PLAIN}, {"name": "b", "key": PLAIN + "-b"}])
    assert src.poll() is None and [k.name for k in src.policy.keys] == ["a", "b"]
    path.write_text("keys: [{name: B}]\n")
    err = src.poll()
    assert err and "keys[0]" in err and [k.name for k in src.policy.keys] == ["a", "b"]
    assert src.poll() is None  # reported once, not every tick
    path.unlink()
    assert src.poll() and [k.name for k in src.policy.keys] == ["a", "b"]
    with pytest.raises(KeysError):
        KeysSource(True, tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="keys file is needed"):
        KeysSource(True, None)
    assert KeysSource(False, None).policy.enabled is False


def test_first_start_secrets_are_0600_made_once(tmp_path):
    key = ensure_default_keys(tmp_path / "api-keys.yaml")
    assert key and key.startswith("gf-")
    assert ensure_default_keys(tmp_path / "api-keys.yaml") is None  # never overwritten
    (entry,) = load_keys(tmp_path / "api-keys.yaml")
    assert entry.digest == hash_key(key) and key not in (tmp_path / "api-keys.yaml").read_text()
    tok, made = ensure_secret(tmp_path / "admin-token")
    assert made and ensure_secret(tmp_path / "admin-token") == (tok, False)
    for f in ("api-keys.yaml", "api-keys.default-key", "admin-token"):
        assert stat.S_IMODE(os.stat(tmp_path / f).st_mode) == 0o600, f


def test_fleet_yaml_names_the_keys_file_problem_and_reads_it_relative_to_itself(tmp_path):
    (tmp_path / "keys.yaml").write_text("keys: [{name: Bad, key: short}]\n")
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"gateway": {"auth": {"keys_file": "keys.yaml"}},
                                     "pools": [{"name": "p", "model": "m"}]}))
    with pytest.raises(ConfigError, match=r"gateway\.auth\.keys_file: .*keys\[0\]\.name"):
        load_config(fleet)
    _write(tmp_path / "keys.yaml", [{"name": "ok", "key": PLAIN}])
    assert load_config(fleet).gateway.auth.keys_file == tmp_path / "keys.yaml"


def test_keys_new_refuses_a_repeated_name_and_keeps_the_file(tmp_path):
    path = _write(tmp_path / "k.yaml", [{"name": "a", "key": PLAIN}])
    before = path.read_text()
    r = subprocess.run([sys.executable, "-m", "autoscaler.cli", "keys", "new", "a", "--file", str(path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 2 and "unique" in r.stderr and path.read_text() == before


def test_grafanas_password_is_given_or_made_once_never_admin(tmp_path):
    import os
    import stat

    from autoscaler.credentials import grafana_password

    path, made = grafana_password(tmp_path)
    first = path.read_text().strip()
    assert made and len(first) >= 20 and first != "admin"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # Grafana (uid 472) reads it from its own volume
    assert grafana_password(tmp_path) == (path, False) and path.read_text().strip() == first
    assert grafana_password(tmp_path, "mine")[1] is False and path.read_text().strip() == "mine"


def test_a_pools_secret_files_go_to_the_replicas_volume_as_files_never_into_the_environment(tmp_path):
    from autoscaler.config import parse_config
    from autoscaler.loop.lifecycle import replica_spec
    from autoscaler.runtime.docker import SECRETS_MOUNT, DockerRuntime, create_kwargs

    token = tmp_path / "hf_token"
    token.write_text("hf_secretvalue\n")
    cfg = parse_config({"pools": [{"name": "big", "model": "m", "engine": "vllm",
                                   "secret_files": {"hf_token": str(token)}}]})
    spec = replica_spec(cfg.pools[0], "active", ())
    rt = DockerRuntime(None, "gf", "gf_backend", "img", secrets_dir=tmp_path / "vol",
                       secrets_volume="gf_replica-secrets")
    rt.write_secrets(spec)
    written = tmp_path / "vol" / "big" / "hf_token"
    assert written.read_text() == "hf_secretvalue\n" and oct(written.stat().st_mode & 0o777) == "0o444"
    kw = create_kwargs(spec, "r-big-1", project="gf", network="gf_backend", default_image="img", gpus_visible=False,
                       secrets_volume="gf_replica-secrets")
    assert f"HF_TOKEN_PATH={SECRETS_MOUNT}/big/hf_token" in [f"{k}={v}" for k, v in kw["environment"].items()]
    assert "hf_secretvalue" not in str(kw)
    assert {m["Source"]: m["ReadOnly"] for m in kw["mounts"]}["gf_replica-secrets"] is True

"""The Docker API proxy's checks on a create body, decided on the JSON Docker reads.

The admitted bodies are the ones docker-py really sends for the runtime's own create_kwargs (captured at the
SDK's last step, `create_container_from_config`); every refused one is such a body with one thing changed the
way an attacker would change it: Go's case-insensitive field names and Unicode folding, JSON escapes,
duplicate keys, encodings, sizes, and each HostConfig field that would give a container the host.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

import docker
from autoscaler.config import parse_config
from autoscaler.docker_guard import MAX_BODY, Policy, Refused, check_create, decode
from autoscaler.docker_stack import helper_kwargs
from autoscaler.reconcile import replica_spec
from autoscaler.runtime.docker import create_kwargs

PROJECT, NET, APP = "gf", "gf_backend", "gpufleet/app:latest"
U1, U2, U3 = ("GPU-6f4b1d2a-0000-4000-8000-00000000000" + c for c in "123")
CFG = parse_config({"pools": [
    {"name": "chat", "model": "tiny"},
    {"name": "big", "model": "llama", "engine": "vllm", "gpus_per_replica": 2, "secret_files": {"hf_token": "/x"}},
]})
POLICY = Policy(project=PROJECT, network=NET, images=frozenset({APP, "vllm/vllm-openai:v0.11.0"}),
                volumes=frozenset({"gf_weights", "gf_replica-secrets"}),
                read_only_volumes=frozenset({"gf_replica-secrets"}), max_gpus=2, stack_image=APP,
                nvml_helper="gf-nvml")


class _Captured(Exception):
    pass


def sdk_body(kwargs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """What docker-py sends for containers.create(**kwargs): (body, name)."""
    client = docker.DockerClient(base_url="tcp://127.0.0.1:9", version="1.41")
    seen: dict[str, Any] = {}

    def capture(config: dict[str, Any], name: str | None = None, platform: str | None = None) -> None:
        seen["body"] = {k: v for k, v in config.items() if v is not None}  # as its _post_json does
        seen["name"] = name
        raise _Captured

    client.api.create_container_from_config = capture  # type: ignore[method-assign]
    with pytest.raises(_Captured):
        client.containers.create(**kwargs)
    return json.loads(json.dumps(seen["body"])), seen["name"]


def replica(pool: str = "chat", gpus: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    spec = replica_spec(CFG.pool(pool), "active", gpus)
    return sdk_body(create_kwargs(spec, f"r-{pool}-1a2b3c4d", project=PROJECT, network=NET, default_image=APP,
                                  gpus_visible=True, secrets_volume="gf_replica-secrets"))


def admit(body: dict[str, Any] | bytes, name: str) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return check_create(raw, name, POLICY)


def test_what_the_runtime_sends_is_admitted_and_forwarded_as_the_same_settings():
    for pool, gpus in (("chat", ()), ("big", (U1, U2))):
        body, name = replica(pool, gpus)
        out = admit(body, name)
        hc = out["HostConfig"]
        assert (out["Image"], out["Entrypoint"], out["Cmd"]) == (body["Image"], body["Entrypoint"], body["Cmd"])
        assert hc["CapDrop"] == ["ALL"] and hc["NetworkMode"] == NET and hc["Memory"] == 32 << 30
        assert out["Labels"] == body["Labels"] and out["Env"] == body["Env"]
    assert hc["DeviceRequests"] == [{"Driver": "nvidia", "Count": 0, "DeviceIDs": [U1, U2],
                                     "Capabilities": [["gpu"]], "Options": {}}]
    assert {m["Source"]: m["ReadOnly"] for m in hc["Mounts"]} == {"gf_weights": False, "gf_replica-secrets": True}
    assert "CUDA_VISIBLE_DEVICES=" + f"{U1},{U2}" in out["Env"]


def test_the_nvml_helper_is_admitted_only_as_itself():
    body, name = sdk_body(helper_kwargs(PROJECT, NET, APP))
    out = admit(body, name)
    assert out["HostConfig"]["DeviceRequests"][0]["Capabilities"] == [["utility"]]
    # the same body under a replica's name, or a replica asking for the helper's all-GPU request: refused
    r, rname = replica()
    with pytest.raises(Refused):
        admit(body, rname)
    r["HostConfig"]["DeviceRequests"] = body["HostConfig"]["DeviceRequests"]
    with pytest.raises(Refused):
        admit(r, rname)
    evil = copy.deepcopy(body)
    evil["Cmd"] = ["nvml-agent", "--port", "8185", "--evil"]
    with pytest.raises(Refused, match="nothing else"):
        admit(evil, name)


def _mutations() -> list[tuple[str, Any]]:
    """(what, how): each a change to a good body an attacker would try."""
    def hc(**kv: Any) -> Any:
        return lambda b: b["HostConfig"].update(kv)

    def drop(key: str) -> Any:
        return lambda b: b["HostConfig"].pop(key)

    def dev(**kv: Any) -> Any:
        return lambda b: b["HostConfig"]["DeviceRequests"][0].update(kv)

    return [
        ("privileged", hc(Privileged=True)),
        ("privileged, lower case (Go matches it)", hc(privileged=True)),
        ("bind mount of the host's root", hc(Binds=["/:/host"])),
        ("a bind in Mounts", lambda b: b["HostConfig"].setdefault("Mounts", []).append(
            {"Type": "bind", "Source": "/", "Target": "/host"})),
        ("a volume of another project", lambda b: b["HostConfig"].setdefault("Mounts", []).append(
            {"Type": "volume", "Source": "other_data", "Target": "/data"})),
        ("the secrets volume writable", lambda b: b["HostConfig"].setdefault("Mounts", []).append(
            {"Type": "volume", "Source": "gf_replica-secrets", "Target": "/s", "ReadOnly": False})),
        ("a mount with bind options", lambda b: b["HostConfig"].setdefault("Mounts", []).append(
            {"Type": "volume", "Source": "gf_weights", "Target": "/w", "BindOptions": {"Propagation": "rshared"}})),
        ("the host's PID namespace", hc(PidMode="host")),
        ("the proxy's PID namespace", hc(PidMode="container:gf-docker-proxy-1")),
        ("the proxy's IPC namespace", hc(IpcMode="container:gf-docker-proxy-1")),
        ("the host's IPC", hc(IpcMode="host")),
        ("the host's UTS", hc(UTSMode="host")),
        ("the host's user namespace", hc(UsernsMode="host")),
        ("the host's cgroup namespace", hc(CgroupnsMode="host")),
        ("the host's network", hc(NetworkMode="host")),
        ("another container's network", hc(NetworkMode="container:gf-gateway-1")),
        ("another network", hc(NetworkMode="gf_edge")),
        ("published host ports", hc(PortBindings={"8000/tcp": [{"HostPort": "80"}]})),
        ("seccomp off", hc(SecurityOpt=["no-new-privileges:true", "seccomp=unconfined"])),
        ("SELinux labels off", hc(SecurityOpt=["no-new-privileges:true", "label=disable"])),
        ("apparmor off", hc(SecurityOpt=["apparmor=unconfined"])),
        ("no no-new-privileges", hc(SecurityOpt=[])),
        ("a capability added", hc(CapAdd=["SYS_ADMIN"])),
        ("capabilities kept", drop("CapDrop")),
        ("masked paths emptied", hc(MaskedPaths=[])),
        ("read-only paths emptied", hc(ReadonlyPaths=[])),
        ("a device node", hc(Devices=[{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem"}])),
        ("a device cgroup rule", hc(DeviceCgroupRules=["c *:* rwm"])),
        ("sysctls", hc(Sysctls={"kernel.core_pattern": "|/evil"})),
        ("a cgroup parent", hc(CgroupParent="/")),
        ("another runtime", hc(Runtime="runc-evil")),
        ("OOM score", hc(OomScoreAdj=-1000)),
        ("no memory limit", drop("Memory")),
        ("no pids limit", drop("PidsLimit")),
        ("pids unlimited", hc(PidsLimit=-1)),
        ("volumes from another container", hc(VolumesFrom=["gf-autoscaler-1"])),
        ("links", hc(Links=["gf-autoscaler-1:a"])),
        ("another tmpfs", hc(Tmpfs={"/tmp": "rw,nosuid,nodev,size=1g", "/etc": "rw"})),
        ("an exec tmpfs", hc(Tmpfs={"/tmp": "rw,exec,size=1g"})),
        ("restart always", hc(RestartPolicy={"Name": "always"})),
        ("a log driver", hc(LogConfig={"Type": "syslog", "Config": {"syslog-address": "tcp://x"}})),
        ("every GPU", dev(Count=-1, DeviceIDs=[])),
        ("a GPU more than the fleet's largest replica", dev(DeviceIDs=[U1, U2, U3])),
        ("a GPU twice", dev(DeviceIDs=[U1, U1])),
        ("a GPU by index", dev(DeviceIDs=["0"])),
        ("all capabilities", dev(Capabilities=[["gpu", "utility", "compute", "video", "display"]])),
        ("another driver", dev(Driver="cdi")),
        ("driver options", dev(Options={"x": "y"})),
        ("an image not of the fleet", lambda b: b.update(Image="alpine:latest")),
        ("root", lambda b: b.update(User="0:0")),
        ("a tty", lambda b: b.update(Tty=True)),
        ("exposed volumes", lambda b: b.update(Volumes={"/host": {}})),
        ("a healthcheck command", lambda b: b.update(Healthcheck={"Test": ["CMD", "evil"]})),
        ("another network in NetworkingConfig", lambda b: b.update(
            NetworkingConfig={"EndpointsConfig": {"bridge": {}}})),
        ("another project's owner label", lambda b: b["Labels"].update({"io.gpufleet.owner": "other"})),
        ("a label gpufleet does not set", lambda b: b["Labels"].update({"traefik.enable": "true"})),
        ("no labels", lambda b: b.pop("Labels")),
        ("a NUL in an argument", lambda b: b["Cmd"].append("a\x00b")),
        ("env twice", lambda b: b["Env"].extend(["A=1", "A=2"])),
        ("an env name that is not one", lambda b: b["Env"].append("=x")),
    ]


@pytest.mark.parametrize(("what", "how"), _mutations(), ids=[m[0] for m in _mutations()])
def test_each_widening_of_a_good_body_is_refused(what, how):
    body, name = replica("big", (U1, U2))
    how(body)
    with pytest.raises(Refused):
        admit(body, name)


def _good_text() -> tuple[str, str]:
    body, name = replica("big", (U1, U2))
    return json.dumps(body), name


HC = '"HostConfig": {'


@pytest.mark.parametrize(("what", "edit"), [
    ("a key written with a JSON escape", lambda t: t.replace(HC, HC + '"\\u0050rivileged": true, ')),
    ("a value written with a JSON escape",
     lambda t: t.replace(f'"NetworkMode": "{NET}"', '"NetworkMode": "\\u0068ost"')),
    ("Go's Unicode folding: long s", lambda t: t.replace(HC, HC + '"\u017fecurityOpt": [], ')),
    ("Go's Unicode folding: Kelvin sign", lambda t: t.replace(HC, HC + '"\u212aernelMemory": 1, ')),
    ("a field in another case", lambda t: t.replace('"CapDrop"', '"capdrop"')),
    ("HostConfig twice, the last privileged", lambda t: t[:-1] + ', "HostConfig": {"Privileged": true}}'),
    ("a key twice, case apart", lambda t: t[:-1] + ', "hostconfig": {"Privileged": true}}'),
    ("NaN", lambda t: t.replace('"PidsLimit": 2048', '"PidsLimit": NaN')),
    ("a lone surrogate", lambda t: t.replace('"Cmd": [', '"Cmd": ["\\ud800", ')),
])
def test_what_a_text_matcher_missed_is_refused(what, edit):
    text, name = _good_text()
    evil = edit(text)
    assert evil != text
    with pytest.raises(Refused):
        check_create(evil.encode(), name, POLICY)


def test_bytes_docker_would_read_otherwise_are_refused():
    text, name = _good_text()
    for raw in (b"\xef\xbb\xbf" + text.encode(),  # a byte-order mark
                text.replace('"ALL"', '"AL\xff"').encode("latin-1"),  # invalid UTF-8 (Go: U+FFFD)
                text.encode()[:-1],  # cut
                b"[]", b"null"):
        with pytest.raises(Refused):
            check_create(raw, name, POLICY)
    padded = text[:-1] + ', "Cmd": ["' + "x" * MAX_BODY + '"]}'
    with pytest.raises(Refused, match="larger"):
        check_create(padded.encode(), name, POLICY)
    with pytest.raises(Refused, match="deep"):
        decode(b"[" * 30_000 + b"]" * 30_000)  # under the size limit


def test_a_replica_is_named_as_one_of_this_project_and_nothing_else():
    body, _ = replica()
    for name in (None, "evil", "other-r-chat-1--starting.active", "gf-r-chat-1--active", "gf-nvml"):
        with pytest.raises(Refused):
            admit(body, name)  # type: ignore[arg-type]

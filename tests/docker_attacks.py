"""Create bodies as docker-py sends them for gpufleet's own replicas, and the ways an attacker would change
them: the tables tests/unit/test_docker_guard.py checks the guard with, and tests/e2e/test_docker_proxy_attacks.py
sends to the real proxy (from a container of the stack's image, which has no pytest: nothing here needs it)."""

from __future__ import annotations

import json
from typing import Any

import docker
from autoscaler.backend_auth import BackendKeys
from autoscaler.config import parse_config
from autoscaler.docker_guard import Policy
from autoscaler.loop.lifecycle import replica_spec
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
KEYS = BackendKeys("attack-suite-secret")  # a stack always gives its replicas their keys


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
    try:
        client.containers.create(**kwargs)
    except _Captured:
        return json.loads(json.dumps(seen["body"])), seen["name"]
    raise AssertionError("docker-py sent nothing")


def replica(pool: str = "chat", gpus: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    spec = replica_spec(CFG.pool(pool), "active", gpus)
    return sdk_body(create_kwargs(spec, f"r-{pool}-1a2b3c4d", project=PROJECT, network=NET, default_image=APP,
                                  gpus_visible=True, secrets_volume="gf_replica-secrets", keys=KEYS))


def mutations() -> list[tuple[str, Any]]:
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


HC = '"HostConfig": {'


TEXT_EDITS: list[tuple[str, Any]] = [
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
]

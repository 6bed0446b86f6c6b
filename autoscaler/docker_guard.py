"""What the Docker API proxy admits: pure checks on a request, decided on the JSON Docker will read.

Docker decodes a create body with Go's encoding/json: field names match case-insensitively (with Unicode
simple folding: "ſ" is "s", "K" (Kelvin) is "k"), the last of duplicate keys wins, invalid UTF-8 becomes
U+FFFD. A guard that matched the *text* saw none of that. Here the body is decoded strictly (UTF-8, no
duplicate keys, no NaN), every object Docker reads as a struct must use exactly the field names gpufleet
sends (any other spelling, case or unknown field is refused), every value is checked against what gpufleet
itself sets for a replica, and the proxy forwards `canonical_create(...)`'s re-serialisation, never the
caller's bytes.

A replica, as this admits it: an image of the fleet, on the stack's backend network, labelled as the
project's, every capability dropped, no-new-privileges, limits on memory and pids, /tmp as the only tmpfs,
the stack's own named volumes, GPUs only as a device request for named GPUs with the "gpu" capability;
no privilege, host namespace, bind mount, device node, sysctl, security option or runtime of its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autoscaler.gpus.nvml_agent import PORT as NVML_PORT

MAX_BODY = 64 * 1024  # a replica's create body is ~2 KB
MAX_GPUS = 8


class Refused(ValueError):
    """The request is not one gpufleet makes; the message says which part."""


@dataclass(frozen=True)
class Policy:
    project: str
    network: str  # the replicas' network, as Docker names it (<project>_backend)
    images: frozenset[str]  # images of the fleet (presets' defaults, pools' own, the stack's)
    volumes: frozenset[str]  # named volumes replicas may mount (Docker names: <project>_<name>)
    read_only_volumes: frozenset[str] = frozenset()  # of those, mounted read-only only (the secrets)
    max_gpus: int = MAX_GPUS  # GPUs one replica may ask for (the fleet's largest gpus_per_replica)
    stack_image: str | None = None  # the stack's own image: the NVML helper runs it
    nvml_helper: str | None = None  # the NVML helper's container name (the one create with `utility` GPUs)
    extra_labels: frozenset[str] = field(default_factory=frozenset)


# ---- strict JSON ---------------------------------------------------------------------------------------


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise Refused(f"duplicate key {k!r} (Docker would read the last one)")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise Refused(f"{name} is not JSON")


def decode(body: bytes) -> Any:
    """JSON as a strict reader sees it: UTF-8 only, no duplicate keys, no NaN/Infinity, no lone surrogates."""
    if len(body) > MAX_BODY:
        raise Refused(f"body larger than {MAX_BODY} bytes")
    if body.startswith(b"\xef\xbb\xbf"):
        raise Refused("a byte-order mark before the JSON")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Refused(f"not UTF-8 (byte {e.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise Refused(f"not JSON: {e.msg} at {e.pos}") from None
    except RecursionError:
        raise Refused("nested too deep") from None
    _utf8_strings(doc)
    return doc


def _utf8_strings(v: Any) -> None:
    # "\ud800" decodes in Python; Go would make it U+FFFD: a string that is not what it says is refused
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused("a string with an unpaired surrogate escape") from None
    elif isinstance(v, dict):
        for k, x in v.items():
            _utf8_strings(k)
            _utf8_strings(x)
    elif isinstance(v, list):
        for x in v:
            _utf8_strings(x)


def _struct(obj: Any, where: str, allowed: Mapping[str, Callable[[Any, str], Any]],
            required: frozenset[str] = frozenset()) -> dict[str, Any]:
    """An object Docker reads as a Go struct: only these exact field names (Go would match any case or
    folding of them, so every other spelling is refused), each value checked and made canonical."""
    if not isinstance(obj, dict):
        raise Refused(f"{where}: an object expected")
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if k not in allowed:
            near = [a for a in allowed if a.lower() == k.lower() or _fold(a) == _fold(k)]
            if near:
                raise Refused(f"{where}.{k}: spelled unlike gpufleet's {near[0]!r} (Go matches it case-insensitively)")
            raise Refused(f"{where}.{k}: not a field gpufleet sets")
        checked = allowed[k](v, f"{where}.{k}")
        if checked is not None:
            out[k] = checked
    missing = required - out.keys()
    if missing:
        raise Refused(f"{where}: {', '.join(sorted(missing))} missing (gpufleet always sets it)")
    return out


def _fold(s: str) -> str:
    # Go's EqualFold uses Unicode simple folding; these are the non-ASCII letters that fold onto ASCII ones
    return s.replace("\u017f", "s").replace("\u212a", "k").casefold()


# ---- values --------------------------------------------------------------------------------------------


def _false(v: Any, where: str) -> bool | None:
    if v is not False and v is not None:
        raise Refused(f"{where}: must be false")
    return None  # Docker's default: not forwarded


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise Refused(f"{where}: true or false")
    return v


def _int(lo: int, hi: int) -> Callable[[Any, str], int]:
    def check(v: Any, where: str) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise Refused(f"{where}: an integer from {lo} to {hi}")
        return v
    return check


def _str(pattern: str, max_len: int = 4096) -> Callable[[Any, str], str]:
    rx = re.compile(pattern)

    def check(v: Any, where: str) -> str:
        if not isinstance(v, str) or len(v) > max_len or "\x00" in v or not rx.fullmatch(v):
            raise Refused(f"{where}: {v!r} is not what gpufleet sets")
        return v
    return check


def _one_of(*values: Any) -> Callable[[Any, str], Any]:
    def check(v: Any, where: str) -> Any:
        if v not in values or type(v) is not type(values[0]):
            raise Refused(f"{where}: {v!r} (gpufleet sets only {', '.join(map(repr, values))})")
        return v
    return check


def _strings(max_items: int, max_len: int = 4096) -> Callable[[Any, str], list[str]]:
    def check(v: Any, where: str) -> list[str]:
        if not isinstance(v, list) or len(v) > max_items or not all(isinstance(x, str) for x in v) \
                or any(len(x) > max_len or "\x00" in x for x in v):
            raise Refused(f"{where}: a list of at most {max_items} strings")
        return list(v)
    return check


_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}=.*$", re.S)
_NAME = r"[a-z0-9][a-z0-9_.-]{0,62}"
_GPU_ID = re.compile(r"^GPU-[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")
_SIZE_TMPFS = re.compile(r"^rw,nosuid,nodev,size=[1-9][0-9]{0,8}[kmg]?$")
_PATH = re.compile(r"^/(?!.*(^|/)\.\.?(/|$))[A-Za-z0-9_./@+-]{0,255}$")
_STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT")
_GIB = 1 << 30


def _env(v: Any, where: str) -> list[str]:
    items = _strings(256, 16384)(v, where)
    keys = set()
    for e in items:
        if not _ENV.fullmatch(e):
            raise Refused(f"{where}: {e.split('=', 1)[0]!r} is not an environment variable name")
        k = e.split("=", 1)[0]
        if k in keys:
            raise Refused(f"{where}: {k} twice")
        keys.add(k)
    return items


def _labels(p: Policy) -> Callable[[Any, str], dict[str, str]]:
    known = {"io.gpufleet.owner", "io.gpufleet.replica", "io.gpufleet.pool", "io.gpufleet.model",
             "io.gpufleet.gpus", "io.gpufleet.config-hash", "io.gpufleet.created-at", "io.gpufleet.stop-grace",
             "io.gpufleet.role", "com.docker.compose.project", "com.docker.compose.service",
             "com.docker.compose.oneoff", "com.docker.compose.config-hash"} | set(p.extra_labels)

    def check(v: Any, where: str) -> dict[str, str]:
        if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
            raise Refused(f"{where}: string labels")
        for k, x in v.items():
            if k not in known:
                raise Refused(f"{where}.{k}: not a label gpufleet sets")
            if len(x) > 1024 or "\x00" in x:
                raise Refused(f"{where}.{k}: too long")
        for k in ("io.gpufleet.owner", "com.docker.compose.project"):
            if v.get(k) != p.project:
                raise Refused(f"{where}.{k} must be this stack's project {p.project!r}")
        return dict(v)
    return check


def _mounts(p: Policy) -> Callable[[Any, str], list[dict[str, Any]]]:
    def one(m: Any, where: str) -> dict[str, Any]:
        m = _struct(m, where, {"Type": _one_of("volume"), "Source": _str(_NAME, 64),
                               "Target": _str(_PATH.pattern, 256), "ReadOnly": _bool},
                    required=frozenset({"Type", "Source", "Target"}))
        if m["Source"] not in p.volumes:
            raise Refused(f"{where}.Source: {m['Source']!r} is not a volume of this stack's replicas")
        if m["Source"] in p.read_only_volumes and not m.get("ReadOnly"):
            raise Refused(f"{where}: {m['Source']} is mounted read-only only")
        return {"Type": "volume", "Source": m["Source"], "Target": m["Target"], "ReadOnly": bool(m.get("ReadOnly"))}

    def check(v: Any, where: str) -> list[dict[str, Any]]:
        if not isinstance(v, list) or len(v) > 8:
            raise Refused(f"{where}: at most 8 mounts")
        out = [one(m, f"{where}[{i}]") for i, m in enumerate(v)]
        if len({m["Target"] for m in out}) != len(out):
            raise Refused(f"{where}: two mounts at one path")
        return out
    return check


def _devices(p: Policy, helper: bool) -> Callable[[Any, str], list[dict[str, Any]]]:
    def one(d: Any, where: str) -> dict[str, Any]:
        d = _struct(d, where, {"Driver": _one_of("nvidia"), "Count": _int(-1, 0),
                               "DeviceIDs": _strings(MAX_GPUS, 80), "Capabilities": lambda v, w: v,
                               "Options": lambda v, w: v}, required=frozenset({"Driver", "Capabilities"}))
        if d.get("Options") not in (None, {}):
            raise Refused(f"{where}.Options: none")
        caps, ids, count = d["Capabilities"], d.get("DeviceIDs") or [], d.get("Count", 0)
        if helper:
            # the NVML helper: every GPU, but only NVML (no compute, no memory of any process)
            if caps != [["utility"]] or count != -1 or ids:
                raise Refused(f"{where}: the NVML helper gets all GPUs with the utility capability only")
            return {"Driver": "nvidia", "Count": -1, "DeviceIDs": None, "Capabilities": [["utility"]], "Options": {}}
        if caps != [["gpu"]]:
            raise Refused(f"{where}.Capabilities: {caps!r} (gpufleet asks for [[\"gpu\"]] only)")
        if count != 0:
            raise Refused(f"{where}.Count: {count} (GPUs are named one by one, never counted)")
        if not ids or len(ids) > p.max_gpus or len(set(ids)) != len(ids) or \
                not all(_GPU_ID.fullmatch(g) for g in ids):
            raise Refused(f"{where}.DeviceIDs: 1 to {p.max_gpus} distinct GPU UUIDs")
        return {"Driver": "nvidia", "Count": 0, "DeviceIDs": list(ids), "Capabilities": [["gpu"]], "Options": {}}

    def check(v: Any, where: str) -> list[dict[str, Any]]:
        if not isinstance(v, list) or len(v) != 1:
            raise Refused(f"{where}: one device request")
        return [one(v[0], f"{where}[0]")]
    return check


def _host_config(p: Policy, helper: bool) -> Callable[[Any, str], dict[str, Any]]:
    def tmpfs(v: Any, where: str) -> dict[str, str]:
        if not isinstance(v, dict) or set(v) != {"/tmp"} or not isinstance(v["/tmp"], str) \
                or not _SIZE_TMPFS.fullmatch(v["/tmp"]):
            raise Refused(f"{where}: /tmp only, rw,nosuid,nodev,size=...")
        return dict(v)

    def restart(v: Any, where: str) -> dict[str, str]:
        v = _struct(v, where, {"Name": _one_of("no", ""), "MaximumRetryCount": _int(0, 0)})
        return {"Name": "no"}

    fields: dict[str, Callable[[Any, str], Any]] = {
        "NetworkMode": _one_of(p.network),
        "RestartPolicy": restart,
        "CapDrop": lambda v, w: v if v == ["ALL"] else _refuse(w, "must be [\"ALL\"]"),
        "SecurityOpt": lambda v, w: v if v == ["no-new-privileges:true"] else
        _refuse(w, "must be [\"no-new-privileges:true\"] and nothing else"),
        "ReadonlyRootfs": _bool,
        "Tmpfs": tmpfs,
        "Memory": _int(64 << 20, 4096 * _GIB),
        "PidsLimit": _int(16, 1_000_000),
        "ShmSize": _int(0, 1024 * _GIB),
        "IpcMode": _one_of("private", "shareable"),
        "CpusetCpus": _str(r"[0-9]{1,4}(,[0-9]{1,4}){0,1023}", 8192),
        "Mounts": _mounts(p),
        "DeviceRequests": _devices(p, helper),
    }
    required = frozenset({"NetworkMode", "CapDrop", "SecurityOpt", "Memory", "PidsLimit"})

    def check(v: Any, where: str) -> dict[str, Any]:
        return _struct(v, where, fields, required)
    return check


def _refuse(where: str, why: str) -> Any:
    raise Refused(f"{where}: {why}")


def check_create(body: bytes, name: str | None, p: Policy) -> dict[str, Any]:
    """A POST /containers/create body and its `name` → the object to forward, or Refused."""
    doc = decode(body)
    helper = p.nvml_helper is not None and name == p.nvml_helper
    if not helper and (name is None or not re.fullmatch(rf"{re.escape(p.project)}-r-[a-z0-9-]{{1,80}}--"
                                                        r"starting\.(active|warm)", name)):
        raise Refused(f"name {name!r}: a replica is named <project>-r-<pool>-<id>--starting.<role>")
    fields: dict[str, Callable[[Any, str], Any]] = {
        "Image": lambda v, w: v if isinstance(v, str) and v in p.images else
        _refuse(w, f"{v!r} is not an image of this fleet"),
        "Entrypoint": _strings(4, 1024),
        "Cmd": _strings(256, 16384),
        "Env": _env,
        "Labels": _labels(p),
        "User": _one_of("65534:65534"),
        "StopSignal": _one_of(*_STOP_SIGNALS),
        "HostConfig": _host_config(p, helper),
        # docker-py writes {"<network>": null} here; the network is HostConfig.NetworkMode's
        "NetworkingConfig": lambda v, w: None if v in (None, {}, {p.network: None}) else
        _refuse(w, "only the replicas' network (HostConfig.NetworkMode)"),
        "NetworkDisabled": _false, "Tty": _false, "OpenStdin": _false, "StdinOnce": _false,
        "AttachStdin": _false, "AttachStdout": _false, "AttachStderr": _false,
    }
    out = _struct(doc, "body", fields, frozenset({"Image", "Labels", "HostConfig"}))
    if helper and (out["Image"] != p.stack_image or out.get("Entrypoint") != ["gpufleet"]
                   or out.get("Cmd") != ["nvml-agent", "--port", str(NVML_PORT)]):
        raise Refused("the NVML helper runs the stack's image as `gpufleet nvml-agent --port 8185`, nothing else")
    if not helper and "io.gpufleet.replica" not in out["Labels"]:
        raise Refused("body.Labels: a replica carries io.gpufleet.replica")
    return out

"""Who may use the gateway: API keys from a keys file, their limits, and the nginx files that enforce them.

The keys file (YAML) lists keys by name; the secret itself is stored only as its SHA-256 (`sha256:`),
or written in plain (`key:`) and hashed when read. nginx (njs) hashes the bearer token a request
carries and looks the hash up: no secret is in the rendered files or the logs, only key names.

Limits are nginx's own: one `limit_req` zone (requests per second, with a burst) and one `limit_conn`
zone (requests at once) per key, and one of each for the whole gateway. Rendering is pure; reading the
file is `load_keys`, which raises `KeysError` naming the entry and field that is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

KEY_PREFIX = "gf-"


class KeysError(ValueError):
    """A keys file that cannot be used: the message names the file, the entry and the field."""


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")  # shown in logs and metrics, never the key
    key: str | None = Field(default=None, min_length=16)  # plain: hashed when read (prefer sha256)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    tier: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    models: tuple[str, ...] = ("*",)  # the `model` names this key may use; "*": all
    requests_per_s: float = Field(default=20, gt=0, le=100000)
    burst: int = Field(default=40, ge=0, le=1000000)
    concurrent: int = Field(default=16, ge=1, le=100000)

    @model_validator(mode="after")
    def _one_secret(self) -> KeyEntry:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of `sha256` (the key's SHA-256, hex) or `key` (the key itself)")
        if self.key is not None and (not self.key.isprintable() or any(c.isspace() for c in self.key)):
            raise ValueError("`key` must be printable with no spaces (it travels in an Authorization header)")
        return self

    @property
    def digest(self) -> str:
        return self.sha256 or hash_key(self.key or "")


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: tuple[KeyEntry, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> KeysFile:
        for what, seq in (("name", [k.name for k in self.keys]), ("key", [k.digest for k in self.keys])):
            dup = {x for x in seq if seq.count(x) > 1}
            if dup:
                shown = ", ".join(sorted(dup)) if what == "name" else f"{len(dup)} repeated"
                raise ValueError(f"each {what} must be unique ({shown})")
        return self


@dataclass(frozen=True)
class AccessPolicy:
    """What the gateway enforces; `enabled=False` is auth off (global limits still hold)."""

    enabled: bool
    keys: tuple[KeyEntry, ...] = ()
    global_requests_per_s: float = 1000
    global_burst: int = 2000
    global_concurrent: int = 4096


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def load_keys(path: Path) -> tuple[KeyEntry, ...]:
    try:
        text = Path(path).read_bytes().decode("utf-8")
        data = yaml.safe_load(text)
    except OSError as e:
        raise KeysError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise KeysError(f"{path}: not UTF-8 text") from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise KeysError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise KeysError(f"{path}: expected a mapping with `keys:` (a list) at the top level")
    try:
        return KeysFile.model_validate(data).keys
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
            lines.append(f"{path}: {loc or '(top level)'}: {err['msg'].removeprefix('Value error, ')}")
        raise KeysError("\n".join(lines)) from None


def write_private(path: Path, text: str) -> None:
    """Write a secret readable by its owner alone (0600 from the start, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_secret(path: Path) -> tuple[str, bool]:
    """The secret in `path`, made (0600) if there is none yet: (secret, made now)."""
    try:
        value = path.read_text().strip()
        if value:
            return value, False
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(32)
    write_private(path, value + "\n")
    return value, True


def ensure_default_keys(path: Path) -> str | None:
    """A keys file with one key `default` (all models, the gateway-wide limits) if `path` has none: the new
    key, shown once.

    Only the key's hash goes into the file; the key itself is written next to it (`<name>.default-key`,
    0600) for the owner of the state directory to read again."""
    if path.exists():
        return None
    key = new_key()
    # the operator's own key (load tests, scale-test): bound by the gateway-wide limits, not a user's
    doc = {"keys": [{"name": "default", "sha256": hash_key(key), "tier": "default", "models": ["*"],
                     "requests_per_s": 1000, "burst": 2000, "concurrent": 4096}]}
    write_private(path, "# API keys of the gpufleet gateway (made on first start). `gpufleet keys new NAME`\n"
                        "# adds one; the secrets are stored as SHA-256 only.\n" + yaml.safe_dump(doc, sort_keys=False))
    write_private(path.with_name(path.stem + ".default-key"), key + "\n")
    return key


def _rate(r: float) -> str:
    """nginx's rate syntax: whole requests per second, else per minute."""
    return f"{int(r)}r/s" if float(r).is_integer() else f"{max(1, round(r * 60))}r/m"


def _error_json(message: str, code: str) -> str:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}},
                      separators=(",", ":"))


# the same OpenAI-shaped answers as the njs check gives; no quote or backslash in them: they sit in an nginx
# '...' string, which unescapes \" and \'
_UNAUTHORIZED_MISSING = _error_json("You did not provide an API key. Send it in the header Authorization: "
                                    "Bearer <key>.", "missing_api_key")
_UNAUTHORIZED_WRONG = _error_json("Incorrect API key provided.", "invalid_api_key")


def render_access(policy: AccessPolicy) -> dict[str, Any]:
    """{'http': text for the http block, 'location': text for the API location, 'table': for routes.js}."""
    http = [
        "# Rendered by gpufleet's autoscaler from the keys file: limits per key and for the whole gateway.",
        "limit_req_status 429;",
        "limit_conn_status 429;",
        "limit_req_log_level warn;",
        "limit_conn_log_level warn;",
        # one key for every request: the gateway-wide limits
        f"limit_req_zone $server_port zone=gf_all_rate:1m rate={_rate(policy.global_requests_per_s)};",
        "limit_conn_zone $server_port zone=gf_all_conn:1m;",
    ]
    loc = []
    if policy.enabled:
        # Refused in the rewrite phase, from the headers alone: before nginx reads a byte of the body and
        # before the limits count the request, so keyless clients hold neither memory nor a keyed client's
        # slot. (js_content reads the whole body before it runs; the key check there is the second one.)
        loc += [
            'if ($http_authorization = "") {',
            "    add_header WWW-Authenticate Bearer always;",
            # the reload probe has no key: this answer, too, says which config nginx serves
            "    add_header X-Gpufleet-Generation $gf_generation always;",
            f"    return 401 '{_UNAUTHORIZED_MISSING}';",
            "}",
            'if ($gf_key = "") {',
            "    add_header WWW-Authenticate Bearer always;",
            "    add_header X-Gpufleet-Generation $gf_generation always;",
            f"    return 401 '{_UNAUTHORIZED_WRONG}';",
            "}",
        ]
    glob = [
        f"limit_req zone=gf_all_rate burst={policy.global_burst} nodelay;",
        f"limit_conn gf_all_conn {policy.global_concurrent};",
    ]
    keys: dict[str, dict[str, Any]] = {}
    if policy.enabled:
        for i, k in enumerate(policy.keys):
            # a variable that is the key's name for its own requests and empty (not counted) for all others
            var = f"$gf_k{i}"
            # `\\`: a name such as `default` or `hostnames` is a map keyword unless escaped
            http += [f'map $gf_key {var} {{ \\{k.name} "{k.name}"; default ""; }}',
                     f"limit_req_zone {var} zone=gf_k{i}_rate:64k rate={_rate(k.requests_per_s)};",
                     f"limit_conn_zone {var} zone=gf_k{i}_conn:64k;"]
            loc += [f"limit_req zone=gf_k{i}_rate burst={k.burst} nodelay;",
                    f"limit_conn gf_k{i}_conn {k.concurrent};"]
            keys[k.digest] = {"name": k.name, "tier": k.tier, "models": list(k.models)}
    # each key's own limits before the gateway-wide ones: a key over its limit is refused before it counts
    # against everyone's
    loc += glob
    return {"http": "\n".join(http) + "\n", "location": "\n".join(loc) + "\n",
            "table": {"auth": policy.enabled, "keys": keys}}


class KeysSource:
    """The keys file as the gateway should enforce it now: re-read when it changes on disk (mtime, size,
    inode); a change that does not validate keeps the last good keys. Auth off: no file is read."""

    def __init__(self, enabled: bool, path: Path | None, global_requests_per_s: float = 1000,
                 global_burst: int = 2000, global_concurrent: int = 4096) -> None:
        self.path = path
        self._limits = (global_requests_per_s, global_burst, global_concurrent)
        self._stamp: tuple[int, int, int] | None | object = object()  # nothing read yet (a missing file is None)
        self.reloads = 0
        if enabled and path is None:
            raise ValueError("auth is on: a keys file is needed")
        if not enabled:
            self.policy = self._policy(False, ())
            self.path = None
        else:
            self.policy = self._policy(True, ())
            err = self.poll()
            if err:
                raise KeysError(err)

    def _policy(self, enabled: bool, keys: tuple[KeyEntry, ...]) -> AccessPolicy:
        rate, burst, concurrent = self._limits
        return AccessPolicy(enabled, keys, global_requests_per_s=rate, global_burst=burst,
                            global_concurrent=concurrent)

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def poll(self) -> str | None:
        """Re-read the file if it changed: None if nothing to report, else why the change was refused."""
        if self.path is None:
            return None
        stamp = self._stat()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            keys = load_keys(self.path)
        except KeysError as e:
            return str(e)
        self.policy = self._policy(True, keys)
        self.reloads += 1
        return None

"""Pure rendering of the gateway's generated files from the set of serving replicas."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from autoscaler.backend_auth import BackendKeys, auth_headers
from autoscaler.gateway.access import AccessPolicy, render_access


@dataclass(frozen=True)
class PoolRoute:
    name: str
    model: str
    servers: tuple[str, ...]  # host:port of routed, ready replicas
    fallback: tuple[str, ...] = ()
    replica_ids: tuple[str, ...] = ()  # the replica behind each server, same order (for X-Gpufleet-Replica)


def initial_routes(cfg: Any) -> list[PoolRoute]:
    """Every pool of a FleetConfig, none serving yet."""
    return [PoolRoute(p.name, p.model, (), p.fallback) for p in cfg.pools]


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True
    )


TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def packaged_template(name: str) -> str:
    return (TEMPLATES / name).read_text()


def render_template(source: str, **ctx: Any) -> str:
    return _env().from_string(source).render(**ctx)


# Until a keys file is read: auth on with no key (every API request 401), never open by accident.
NO_KEYS = AccessPolicy(enabled=True)


def _nginx_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_replica_names(routes: Sequence[PoolRoute], keys: BackendKeys | None = None) -> str:
    """$gf_replica: the replica id behind the upstream address nginx used (the address itself stays inside);
    $gf_backend_auth: the Authorization header a pool's replicas demand ("": none is sent)."""
    lines = ["# Rendered by gpufleet's autoscaler: upstream address -> replica id; pool -> its backend key.",
             "map $upstream_addr $gf_replica {", '    default "";']
    pools = sorted(routes, key=lambda r: r.name)
    for p in pools:
        for addr, rid in zip(p.servers, p.replica_ids, strict=False):
            # the last address tried: a retried request's $upstream_addr lists every replica it went to
            lines.append(f"    {_nginx_str('~(^|, )' + re.escape(addr) + '$')} {_nginx_str(rid)};")
    lines += ["}", "map $gf_pool $gf_backend_auth {", '    default "";']
    for p in pools:
        header = auth_headers(keys, p.name).get("Authorization")
        if header:  # $gf_pool is the upstream's name: "-" written "_"
            lines.append(f"    {_nginx_str(p.name.replace('-', '_'))} {_nginx_str(header)};")
    return "\n".join(lines) + "\n}\n"


def render_gateway(
    routes: Sequence[PoolRoute], upstream_template: Path | None = None, activator: bool = False,
    access: AccessPolicy = NO_KEYS, routing: Mapping[str, Any] | None = None,
    backend_keys: BackendKeys | None = None,
) -> dict[str, str]:
    """{file name: content} for the files the gateway includes. Raises on a broken template.
    activator: a pool with no serving replica (nor fallback) goes to the activator instead of a 503.
    access: the API keys and limits nginx enforces.
    routing: aliases, rules, fallback caps and the state file (gateway.routing.routing_table); without
    it, each pool's model routes to it and falls back as its PoolRoute says.
    backend_keys: what the replicas demand; nginx presents each pool's key to its replicas."""
    pools = sorted(routes, key=lambda r: r.name)
    acc = render_access(access)
    src = upstream_template.read_text() if upstream_template else packaged_template("upstreams.conf.j2")
    table: dict[str, Any] = {
        "routes": {p.model: p.name for p in pools},
        "models": {p.name: p.model for p in pools},
        "fallback": {p.name: [{"pool": f, "max_tokens": None} for f in p.fallback] for p in pools if p.fallback},
        "rules": [],
        **(routing or {}),
        "serving": {p.name: bool(p.servers) for p in pools},
        "activator": activator,
        **acc["table"],
    }
    upstreams = render_template(src, pools=pools)
    # Which config a worker runs: /v1/models answers it in a header, so a reload can be confirmed.
    names = render_replica_names(pools, backend_keys)
    stamp = upstreams + acc["http"] + acc["location"] + names + json.dumps(table, sort_keys=True)
    table["generation"] = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    return {
        "upstreams.conf": upstreams,
        "access.conf": acc["http"],
        "access-location.conf": acc["location"],
        "replicas.conf": names,
        "routes.js": render_template(packaged_template("routes.js.j2"), routes=table),
    }


def files_generation(files: dict[str, str]) -> str | None:
    """The generation render_gateway stamped into these files (None for files of another origin)."""
    m = re.search(r'"generation": "([0-9a-f]+)"', files.get("routes.js", ""))
    return m.group(1) if m else None

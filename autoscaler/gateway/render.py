"""Pure rendering of the gateway's generated files from the set of serving replicas."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2


@dataclass(frozen=True)
class PoolRoute:
    name: str
    model: str
    servers: tuple[str, ...]  # host:port of routed, ready replicas
    fallback: tuple[str, ...] = ()


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


def render_gateway(
    routes: Sequence[PoolRoute], upstream_template: Path | None = None, activator: bool = False
) -> dict[str, str]:
    """{file name: content} for the files the gateway includes. Raises on a broken template.
    activator: a pool with no serving replica (nor fallback) goes to the activator instead of a 503."""
    pools = sorted(routes, key=lambda r: r.name)
    src = upstream_template.read_text() if upstream_template else packaged_template("upstreams.conf.j2")
    table = {
        "routes": {p.model: p.name for p in pools},
        "serving": {p.name: bool(p.servers) for p in pools},
        "fallback": {p.name: list(p.fallback) for p in pools if p.fallback},
        "activator": activator,
    }
    upstreams = render_template(src, pools=pools)
    # Which config a worker runs: /v1/models answers it in a header, so a reload can be confirmed.
    table["generation"] = hashlib.sha256((upstreams + json.dumps(table, sort_keys=True)).encode()).hexdigest()[:16]
    return {
        "upstreams.conf": upstreams,
        "routes.js": render_template(packaged_template("routes.js.j2"), routes=table),
    }


def files_generation(files: dict[str, str]) -> str | None:
    """The generation render_gateway stamped into these files (None for files of another origin)."""
    m = re.search(r'"generation": "([0-9a-f]+)"', files.get("routes.js", ""))
    return m.group(1) if m else None

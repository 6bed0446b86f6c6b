"""The gateway's part of fleet.yaml (`gateway:` and a pool's `saturation:`): validated by pydantic, read by
the gateway's modules, composed into FleetConfig by autoscaler/config.py."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    # A misspelt key is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid", frozen=True)


def ip_or_localhost(v: str) -> str:
    if v != "localhost":
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address (or 'localhost')") from None
    return v


class Saturation(_Strict):
    """When a pool counts as saturated, so that new requests overflow to its fallback chain: waiting
    requests per serving replica at or above `waiting_per_replica`. It stops overflowing once that has
    fallen below `clear_below` (default: half of it) and at least `hold_s` have passed."""

    waiting_per_replica: float = Field(gt=0)
    clear_below: float | None = Field(default=None, ge=0)
    hold_s: float = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _order(self) -> Saturation:
        if self.clear_below is not None and self.clear_below > self.waiting_per_replica:
            raise ValueError(f"clear_below ({self.clear_below}) must be <= waiting_per_replica "
                             f"({self.waiting_per_replica})")
        return self

    @property
    def clear(self) -> float:
        return self.waiting_per_replica / 2 if self.clear_below is None else self.clear_below


class AuthConfig(_Strict):
    """API keys at the gateway. On unless switched off; with no keys_file, the stack makes one on first
    start (`api-keys.yaml` in its state directory) holding one generated key, shown once in the log."""

    enabled: bool = True
    keys_file: Path | None = None
    # the whole gateway, whatever the key: what the host can take
    global_requests_per_s: float = Field(default=1000, gt=0, le=1_000_000)
    global_burst: int = Field(default=2000, ge=0, le=10_000_000)
    global_concurrent: int = Field(default=4096, ge=1, le=1_000_000)


class GatewayConfig(_Strict):
    # listen and port: the local stack's; in Docker nginx listens on 8080 and compose publishes it
    listen: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    reload_min_interval_s: float = Field(default=0.5, ge=0)
    worker_shutdown_timeout_s: int = Field(default=240, ge=1, le=86400)
    # How long a client's idle connection stays open between requests. 0 (the default): nginx answers every
    # request with `Connection: close`. A reload closes each idle kept-alive connection of the old workers,
    # and a client that sent its next request on one at that moment gets no answer at all (measured: 1 lost
    # in 851 requests over 40 reloads); a request costs one more TCP handshake instead, small beside an LLM
    # request. Raise it when a client's own retry covers that race (the openai SDK's default does).
    client_keepalive_s: int = Field(default=0, ge=0, le=3600)
    # nginx size syntax; these values are written into nginx.conf, so nothing else gets through
    client_max_body_size: str = Field(default="1m", pattern=r"^[1-9][0-9]{0,8}[kKmMgG]?$")
    upstream_template: Path | None = None  # override the packaged Jinja2 template
    auth: AuthConfig = AuthConfig()
    # nginx sends each access-log line to the autoscaler over UDP (syslog) on this port, on 127.0.0.1 (in
    # Docker: a unix socket in the shared conf volume): the edge metrics. None: off.
    edge_log_port: int | None = Field(default=8183, ge=1, le=65535)
    # nginx's stub_status (connections) for prometheus-nginx-exporter, on 127.0.0.1 locally (8184 in Docker,
    # on the compose network only). None: off.
    status_port: int | None = Field(default=8184, ge=1, le=65535)

    _listen = field_validator("listen")(ip_or_localhost)

    @property
    def listen_host(self) -> str:
        """As nginx's `listen` wants it: IPv6 in brackets."""
        return f"[{self.listen}]" if ":" in self.listen else self.listen

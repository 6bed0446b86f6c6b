"""The stack's secrets on first start: the admin token, the gateway's keys file and its secret for the activator,
in the state directory (the local run dir; in Docker a volume). Each is made once, 0600; the log says where,
never what."""

from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path

from autoscaler.backend_auth import BackendKeys
from autoscaler.config import ConfigError, FleetConfig
from autoscaler.gateway.access import KeysError, KeysSource, ensure_default_keys, ensure_secret, write_private

log = logging.getLogger("gpufleet.credentials")

ADMIN_TOKEN_FILE = "admin-token"
GATEWAY_SECRET_FILE = "gateway-secret"
BACKEND_SECRET_FILE = "backend-secret"
SCRAPE_KEY_FILE = "scrape-key"
KEYS_FILE = "api-keys.yaml"

AUTH_OFF_BANNER = ("!" * 78 + "\n  GATEWAY AUTH IS OFF (gateway.auth.enabled: false): anyone who reaches the\n"
                   "  gateway can use every model. Fine on a laptop; nowhere else.\n" + "!" * 78)


def admin_token(cfg: FleetConfig, state_dir: Path) -> tuple[str, Path]:
    """The admin API's token: the configured one, else the one in the state dir (made on first start);
    and the file that holds it, which Prometheus reads to scrape the autoscaler."""
    path = state_dir / ADMIN_TOKEN_FILE
    if cfg.admin.token:
        write_private(path, cfg.admin.token + "\n")
        return cfg.admin.token, path
    token, made = ensure_secret(path)
    if made:
        # where it is, never what it is: a log outlives its reader (`docker logs`, journald, CI output)
        log.warning("admin API token generated: in %s (mode 0600)", path)
    return token, path


def gateway_secret(state_dir: Path) -> str:
    """What nginx shows the activator (which answers nothing else) and puts on its reload probe: made once
    per state dir, so a restarted autoscaler and the nginx it adopts still agree. Never logged."""
    path = state_dir / GATEWAY_SECRET_FILE
    secret, _ = ensure_secret(path)
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,256}", secret):  # it is written into nginx.conf, in quotes
        raise ConfigError(f"{path}: not a secret gpufleet made (16-256 of A-Z a-z 0-9 _ -); delete the file and "
                          "a new one is made at the next start")
    return secret


def backend_keys(state_dir: Path, scrape_dir: Path) -> BackendKeys:
    """The keys replicas demand (backend_auth), from a secret made once per state dir, so that a restarted
    autoscaler and the replicas it adopts agree; and Prometheus' scrape key written (0600) into scrape_dir,
    where Prometheus reads it. Never logged."""
    secret, _ = ensure_secret(state_dir / BACKEND_SECRET_FILE)
    keys = BackendKeys(secret)
    path = scrape_dir / SCRAPE_KEY_FILE
    try:
        current = path.read_text().strip()
    except FileNotFoundError:
        current = ""
    if current != keys.scrape_key:
        write_private(path, keys.scrape_key + "\n")
    return keys


GRAFANA_PASSWORD_FILE = "admin-password"


def grafana_password(grafana_dir: Path, given: str | None = None) -> tuple[Path, bool]:
    """Grafana's admin password, as the file Grafana reads (GF_SECURITY_ADMIN_PASSWORD__FILE): the one given
    (GPUFLEET_GRAFANA_PASSWORD), else the one made on a first start; never admin/admin. Mode 0644: Grafana
    runs as its own user (472) and this volume is mounted by Grafana and the autoscaler only. (path, made)"""
    path = grafana_dir / GRAFANA_PASSWORD_FILE
    if given:
        value, made = given, False
    else:
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            value = ""
        made = not value
        value = value or secrets.token_urlsafe(18)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(value + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path, made


def keys_source(cfg: FleetConfig, state_dir: Path) -> KeysSource:
    """What the gateway checks API keys against. Auth off is said loudly, at every start."""
    a = cfg.gateway.auth
    if not a.enabled:
        log.warning("\n%s", AUTH_OFF_BANNER)
        return KeysSource(False, None, a.global_requests_per_s, a.global_burst, a.global_concurrent)
    path = a.keys_file
    if path is None:
        path = state_dir / KEYS_FILE
        key = ensure_default_keys(path)
        if key:
            log.warning("gateway API key `default` generated: in %s (mode 0600)",
                        path.with_name(path.stem + ".default-key"))
    try:
        return KeysSource(True, path, a.global_requests_per_s, a.global_burst, a.global_concurrent)
    except KeysError as e:
        raise ConfigError(f"gateway.auth.keys_file: {e}") from None

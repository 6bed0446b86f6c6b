"""The stack's secrets on first start: the admin token and the gateway's keys file, in the state directory
(the local run dir; in Docker a volume). Each is made once, 0600, and shown once in the log."""

from __future__ import annotations

import logging
from pathlib import Path

from autoscaler.config import ConfigError, FleetConfig
from autoscaler.gateway.access import KeysError, KeysSource, ensure_default_keys, ensure_secret, write_private

log = logging.getLogger("gpufleet.credentials")

ADMIN_TOKEN_FILE = "admin-token"
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
        log.warning("admin API token generated (shown once; also in %s, mode 0600): %s", path, token)
    return token, path


def keys_source(cfg: FleetConfig, state_dir: Path) -> KeysSource:
    """What the gateway checks API keys against. Auth off is said loudly, at every start."""
    a = cfg.gateway.auth
    limits = dict(global_requests_per_s=a.global_requests_per_s, global_burst=a.global_burst,
                  global_concurrent=a.global_concurrent)
    if not a.enabled:
        log.warning("\n%s", AUTH_OFF_BANNER)
        return KeysSource(False, None, **limits)  # type: ignore[arg-type]
    path = a.keys_file
    if path is None:
        path = state_dir / KEYS_FILE
        key = ensure_default_keys(path)
        if key:
            log.warning("gateway API key `default` generated (shown once; also in %s, mode 0600): %s",
                        path.with_name(path.stem + ".default-key"), key)
    try:
        return KeysSource(True, path, **limits)  # type: ignore[arg-type]
    except KeysError as e:
        raise ConfigError(f"gateway.auth.keys_file: {e}") from None

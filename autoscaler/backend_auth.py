"""The keys replicas demand, so that no keyless path to a model exists on the backend network.

One stored secret per stack (credentials.backend_secret) gives each pool its own key, derived (HMAC-SHA256),
so a restarted autoscaler and the replicas it adopts agree without a key file per pool, and a replica that
knows its own pool's key (it is in its environment) learns nothing of another pool's. nginx, the activator and
the autoscaler present the pool's key; Prometheus presents the scrape key, which the sim engine accepts on
/metrics only (llama.cpp has one list of keys for every endpoint, so there it is a full key). Pure."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

# what a preset's key_env and key_args may name; the runtime fills them (runtime.base.replica_env, engine_argv)
API_KEY = "{api_key}"
SCRAPE_KEY = "{scrape_key}"


@dataclass(frozen=True)
class BackendKeys:
    secret: str = field(repr=False)

    def _derive(self, purpose: str) -> str:
        return "gfb-" + hmac.new(self.secret.encode(), purpose.encode(), hashlib.sha256).hexdigest()[:48]

    def pool_key(self, pool: str) -> str:
        return self._derive(f"pool:{pool}")

    @property
    def scrape_key(self) -> str:
        return self._derive("scrape")

    def fill(self, pool: str, text: str) -> str:
        return text.replace(API_KEY, self.pool_key(pool)).replace(SCRAPE_KEY, self.scrape_key)


def auth_headers(keys: BackendKeys | None, pool: str) -> dict[str, str]:
    """What the autoscaler and the activator send a replica of pool (nothing when the stack runs keyless)."""
    return {"Authorization": f"Bearer {keys.pool_key(pool)}"} if keys is not None else {}

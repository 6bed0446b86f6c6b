"""fleet.yaml: one validated file. A bad file refuses to start and names the field."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autoscaler.engines import Engine, EngineName, MetricNames, resolve
from autoscaler.gateway.routing import CHARS_PER_TOKEN, STATE_STALE_S
from autoscaler.gateway.settings import GatewayConfig, Saturation, ip_or_localhost
from autoscaler.gpus.settings import GpuConfig
from inference.metrics import TTFT_BUCKETS

SIGNALS = ("queue_depth", "concurrency", "kv_cache_usage", "ttft_p95_s", "request_rate")


class ConfigError(ValueError):
    """A fleet.yaml that cannot be used, with the field path in the message."""


class _Strict(BaseModel):
    # A misspelt key is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class RatePolicy(_Strict):
    type: Literal["replicas", "percent"]
    value: float = Field(gt=0)
    period_s: float = Field(gt=0)


class ScaleRules(_Strict):
    stabilization_s: float = Field(ge=0)
    policies: tuple[RatePolicy, ...] = ()
    select: Literal["max", "min"] = "max"


class Behavior(_Strict):
    tolerance: float = Field(default=0.1, ge=0, lt=1)
    # Up reacts to the latest tick (like HPA); the long down window absorbs the noise.
    metric_window_s: float = Field(default=1.0, gt=0)
    scale_up: ScaleRules = ScaleRules(
        stabilization_s=0,
        policies=(RatePolicy(type="percent", value=100, period_s=15),
                  RatePolicy(type="replicas", value=4, period_s=15)),
    )
    scale_down: ScaleRules = ScaleRules(
        stabilization_s=300, policies=(RatePolicy(type="percent", value=100, period_s=15),)
    )
    panic_threshold: float = Field(default=2.0, gt=1)
    panic_hold_s: float = Field(default=30.0, ge=0)


class Targets(_Strict):
    """Per-replica targets; a signal left unset is not used."""

    queue_depth: float | None = Field(default=None, gt=0)
    concurrency: float | None = Field(default=None, gt=0)
    kv_cache_usage: float | None = Field(default=None, gt=0, le=1)
    ttft_p95_s: float | None = Field(default=None, gt=0)
    request_rate: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_at_least(self) -> Targets:
        if all(getattr(self, s) is None for s in SIGNALS):
            raise ValueError(f"set at least one target ({', '.join(SIGNALS)})")
        return self

    def items(self) -> list[tuple[str, float]]:
        return [(s, v) for s in SIGNALS if (v := getattr(self, s)) is not None]


class WarmPool(_Strict):
    min: int = Field(default=1, ge=0)
    max: int = Field(default=2, ge=0)
    history_s: float = Field(default=600, ge=0)
    # how many warm replicas sleep (vLLM sleep mode: weights in host RAM, GPU memory free, wake in
    # seconds); 0: all awake (activation in well under a second); >= max: all asleep
    asleep: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _order(self) -> WarmPool:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class SimEngineArgs(_Strict):
    profile: str = "tiny"
    load_time_s: float | None = Field(default=None, ge=0)
    max_num_seqs: int | None = Field(default=None, ge=1)
    step_base_s: float | None = Field(default=None, gt=0)
    step_per_seq_s: float | None = Field(default=None, ge=0)
    kv_capacity_tokens: int | None = Field(default=None, ge=1)
    max_waiting: int | None = Field(default=None, ge=1)  # queue bound before 429s (replica default 1024)
    wake_time_s: float | None = Field(default=None, ge=0)  # sleep mode: time to wake

    @field_validator("profile")
    @classmethod
    def _known(cls, v: str) -> str:
        from inference.engines.profiles import PROFILES

        if v not in PROFILES:
            raise ValueError(f"unknown sim profile {v!r}; known: {', '.join(sorted(PROFILES))}")
        return v


_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")


class ReplicaLimits(_Strict):
    """Per replica container (Docker). Generous by default: a sleeping replica keeps its weights in host RAM."""

    memory: str = Field(default="32g", pattern=r"^[1-9][0-9]{0,8}[kKmMgG]?$")  # Docker's size syntax
    pids: int = Field(default=2048, ge=16, le=1_000_000)


class FallbackTarget(_Strict):
    """Where a pool's requests go when it has no serving replica or is saturated; `max_tokens` caps
    the answer there (degradation: a smaller model, shorter answers)."""

    pool: str
    max_tokens: int | None = Field(default=None, ge=1)


class SloConfig(_Strict):
    """What the pool promises its clients: the share of requests whose first token comes within ttft_s.

    Dashboards read attainment off the replicas' TTFT histogram bucket `le=ttft_s` (vLLM's bounds), and
    the burn-rate alerts spend the error budget 1 - objective."""

    ttft_s: float = 2.5
    objective: float = Field(default=0.99, gt=0.5, lt=1)

    @field_validator("ttft_s")
    @classmethod
    def _a_bucket(cls, v: float) -> float:
        if v not in TTFT_BUCKETS:
            raise ValueError(f"must be one of the TTFT histogram's bounds (vLLM's), so attainment can be "
                             f"read off a bucket: {', '.join(f'{b:g}' for b in TTFT_BUCKETS)}")
        return v


class MetricsOverride(_Strict):
    """Metric names behind our signals, for an engine whose names differ from its preset's (a sample name
    as /metrics writes it, or a list of alternatives; [] says the engine does not export it)."""

    running: tuple[str, ...] | None = None
    waiting: tuple[str, ...] | None = None
    kv_cache_usage: tuple[str, ...] | None = None
    ttft_histogram: tuple[str, ...] | None = None  # a histogram's base name (its _bucket samples are read)
    requests_total: tuple[str, ...] | None = None  # a counter of finished requests

    @field_validator("*", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v

    @field_validator("*")
    @classmethod
    def _names(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for n in v or ():
            if not _METRIC_NAME.fullmatch(n):
                raise ValueError(f"{n!r} is not a Prometheus metric name")
        return v

    def apply(self, base: MetricNames) -> MetricNames:
        return replace(base, **{k: v for k, v in self if v is not None})


_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# set by gpufleet for every replica: a pool's env may not change them
_ENV_OURS = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "GPUFLEET_REPLICA_ID")
_VOLUME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_SECRET = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DOCKER_SIZE = r"^[1-9][0-9]{0,8}[kKmMgG]?$"


class PoolConfig(_Strict):
    name: str
    model: str = Field(min_length=1, max_length=256)  # the served name: the OpenAI `model` field
    engine: EngineName = "sim"
    sim: SimEngineArgs = SimEngineArgs()
    command: tuple[str, ...] | None = None  # engine=command: the whole argv, with {port} and {model}
    # what a real engine loads (a Hugging Face repo id, a path in the replica); default: `model`
    model_path: str | None = Field(default=None, min_length=1, max_length=1024)
    executable: str | None = None  # the preset's program, replaced (e.g. a llama-server built on this host)
    args: tuple[str, ...] = ()  # appended to the preset's argv
    image: str | None = None  # docker runtime: the replica image (default: the preset's; sim: the stack's)
    limits: ReplicaLimits = ReplicaLimits()  # docker runtime: each replica container's memory and pids
    ready_path: str | None = Field(default=None, pattern=r"^/[A-Za-z0-9_./?=&-]{0,200}$")  # default: the preset's
    metrics: MetricsOverride | None = None  # default: the preset's names
    sleep: bool | None = None  # the engine serves vLLM's sleep endpoints (default: the preset says)
    env: dict[str, str] = Field(default_factory=dict)  # "{secrets}" in a value: where secret_files are
    # name -> a file the autoscaler reads (relative: to the fleet file); the replica reads it as a file
    # ({secrets}/<name>), never as an environment variable `docker inspect` would show
    secret_files: dict[str, Path] = Field(default_factory=dict)
    # docker runtime: the stack's named volumes (compose project's) -> path in the replica; default: the
    # weights cache volume at the preset's cache path
    volumes: dict[str, str] | None = None
    shm_size: str | None = Field(default=None, pattern=_DOCKER_SIZE)  # docker: /dev/shm (tensor parallel: GBs)
    ipc: Literal["private", "shareable"] | None = None  # docker: never the host's (use shm_size)
    start_timeout_s: float | None = Field(default=None, gt=0)  # not ready by then: stopped (default: preset's)
    stop_grace_s: float | None = Field(default=None, gt=0, le=600)  # stop signal to kill (default: preset's)
    read_only_root: bool | None = None  # docker: the replica's root file system (default: preset's)
    gpus_per_replica: int = Field(default=1, ge=0, le=8)
    gpu_model: str | None = None  # substring of the GPU name, e.g. "H100"
    gpu_min_memory_mb: int = Field(default=0, ge=0)
    gpu_min_link: Literal["NVLINK", "PIX", "PXB", "PHB", "NODE", "SYS"] | None = None  # for multi-GPU replicas
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    warm_pool: WarmPool = WarmPool()
    targets: Targets = Targets(concurrency=6)
    behavior: Behavior = Behavior()
    drain_timeout_s: float = Field(default=120, gt=0)
    # min_replicas 0: to zero after this long without a request; back on the first one, which the
    # activator holds (at most max_held at once, each up to hold_timeout_s) until a replica serves
    scale_to_zero_after_s: float = Field(default=300.0, gt=0)
    hold_timeout_s: float = Field(default=120.0, gt=0)
    max_held: int = Field(default=1000, ge=0)
    # a replica that fails to start or exits on its own delays the pool's next cold start, doubling
    start_backoff_s: float = Field(default=2.0, gt=0)
    start_backoff_max_s: float = Field(default=120.0, gt=0)
    aliases: tuple[str, ...] = ()  # other `model` names routed to this pool (rewritten to `model`)
    # tried in order when the pool has no serving replica, or is saturated (see `saturation`)
    fallback: tuple[FallbackTarget, ...] = ()
    saturation: Saturation | None = None  # unset: overflow only when no replica serves
    # when GPUs run out, a pool may take them from pools of lower priority: sleeping and warm replicas
    # first, then active ones above that pool's min_replicas (by drain). min_replicas is guaranteed.
    priority: int = Field(default=0, ge=-1000, le=1000)
    slo: SloConfig = SloConfig()

    @field_validator("fallback", mode="before")
    @classmethod
    def _fallback_short(cls, v: Any) -> Any:
        # `fallback: [small]` is short for `fallback: [{pool: small}]`
        if isinstance(v, list | tuple):
            return [{"pool": x} if isinstance(x, str) else x for x in v]
        return v

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for a in v:
            if not a or not a.isprintable() or a != a.strip() or len(a) > 256:
                raise ValueError(f"alias {a!r}: printable text of 1-256 characters, no leading/trailing spaces")
        return v

    @property
    def fallback_pools(self) -> tuple[str, ...]:
        return tuple(f.pool for f in self.fallback)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):  # fullmatch: `$` alone would let a trailing newline through
            raise ValueError("use lower-case letters, digits and '-' (it names upstreams and containers)")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.isprintable() or v != v.strip():
            raise ValueError("a model name is printable text without leading or trailing spaces")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PoolConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        if self.engine == "command" and not self.command:
            raise ValueError("engine 'command' needs `command` (argv, with {port} and {model})")
        if self.command and self.engine != "command":
            raise ValueError(f"`command` is for engine 'command'; engine {self.engine!r} takes `args` (appended) "
                             "and `executable` (its program replaced)")
        if self.command and not any("{port}" in a for a in self.command):
            raise ValueError("`command` must contain {port}: the replica has to listen where it is told")
        for k, v in self.env.items():
            if not _ENV_NAME.fullmatch(k):
                raise ValueError(f"env {k!r}: letters, digits and '_', not starting with a digit")
            if k in _ENV_OURS:
                raise ValueError(f"env {k}: set by gpufleet for every replica (from its placement), not by a pool")
            if "\x00" in v or not v.isprintable():
                raise ValueError(f"env {k}: the value must be printable text")
        for name in self.secret_files:
            if not _SECRET.fullmatch(name):
                raise ValueError(f"secret_files {name!r}: lower-case letters, digits, '-' and '_'")
        for vol, path in (self.volumes or {}).items():
            if not _VOLUME.fullmatch(vol):
                raise ValueError(f"volumes {vol!r}: a volume name of the stack (lower-case letters, digits, _ . -)")
            if not path.startswith("/") or "\x00" in path or ":" in path:
                raise ValueError(f"volumes {vol}: {path!r} must be an absolute path in the replica, without ':'")
        eng = resolve(self)
        missing = set(eng.missing_signals())
        for signal, _ in self.targets.items():
            if signal in missing:
                raise ValueError(
                    f"targets.{signal}: engine {self.engine!r} exports no metric for it "
                    f"({', '.join(sorted(missing))} cannot be read from it): drop the target, or name the "
                    f"engine's metric under `metrics`")
        if self.warm_pool.asleep and not eng.sleep:
            raise ValueError(f"warm_pool.asleep: engine {self.engine!r} has no sleep mode (vLLM's /sleep and "
                             "/wake_up); keep warm replicas awake (asleep: 0)")
        return self

    @property
    def engine_spec(self) -> Engine:
        """The engine this pool runs, its preset merged with the pool's overrides."""
        return resolve(self)

    def config_hash(self) -> str:
        """What a replica was started with; replicas of another hash are replaced."""
        keep = self.model_dump(mode="json", include={
            "model", "engine", "sim", "command", "image", "gpus_per_replica", "model_path", "executable", "args",
            "env", "secret_files", "volumes", "shm_size", "ipc", "metrics", "read_only_root"})
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


class AdminConfig(_Strict):
    host: str = "127.0.0.1"
    _host = field_validator("host")(ip_or_localhost)
    port: int = Field(default=8181, ge=1, le=65535)
    token: str | None = None


class ActivatorConfig(_Strict):
    """Where the gateway sends requests for a pool with no serving replica (scale from zero)."""

    enabled: bool = True
    host: str = "127.0.0.1"  # the local stack's; in Docker it listens on the compose network
    port: int = Field(default=8182, ge=1, le=65535)
    keepalive_after_s: float = Field(default=5.0, ge=0)  # a held stream gets 200 and SSE comments after this
    _host = field_validator("host")(ip_or_localhost)


class PrometheusConfig(_Strict):
    enabled: bool = True
    listen: str = "127.0.0.1"
    _listen = field_validator("listen")(ip_or_localhost)
    port: int = Field(default=9090, ge=1, le=65535)
    # the local stack runs Debian's prometheus-nginx-exporter here (127.0.0.1) when it is installed
    nginx_exporter_port: int = Field(default=9113, ge=1, le=65535)


_HEADER = re.compile(r"^[A-Za-z0-9-]{1,64}$")


class RuleMatch(_Strict):
    """What a request must have for a rule to apply; every condition given must hold."""

    models: tuple[str, ...] = ()  # the request's `model` (a pool's model or alias); empty: any
    tiers: tuple[str, ...] = ()  # the API key's tier; empty: any
    headers: dict[str, str] = Field(default_factory=dict)  # header name → exact value
    # the prompt's length in tokens, estimated from the body (4 characters a token)
    prompt_tokens_over: int | None = Field(default=None, ge=0)
    prompt_tokens_under: int | None = Field(default=None, ge=1)

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not _HEADER.fullmatch(k):
                raise ValueError(f"header {k!r}: letters, digits and '-' only")
            if not val.isprintable():
                raise ValueError(f"header {k!r}: the value must be printable text")
        return {k.lower(): val for k, val in v.items()}

    @model_validator(mode="after")
    def _something(self) -> RuleMatch:
        if not (self.models or self.tiers or self.headers or self.prompt_tokens_over is not None
                or self.prompt_tokens_under is not None):
            raise ValueError("a rule matches on at least one of models, tiers, headers, "
                             "prompt_tokens_over, prompt_tokens_under")
        return self


class RouteRule(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    match: RuleMatch
    pool: str


class RoutingConfig(_Strict):
    """Rules tried in order before the `model` field decides; the first that matches picks the pool."""

    rules: tuple[RouteRule, ...] = ()


class FleetConfig(_Strict):
    tick_s: float = Field(default=1.0, gt=0, le=60)
    scrape_timeout_s: float = Field(default=0.5, gt=0)
    unhealthy_after: int = Field(default=3, ge=1)
    gateway: GatewayConfig = GatewayConfig()
    admin: AdminConfig = AdminConfig()
    activator: ActivatorConfig = ActivatorConfig()
    prometheus: PrometheusConfig = PrometheusConfig()
    gpus: GpuConfig = GpuConfig()
    routing: RoutingConfig = RoutingConfig()
    pools: tuple[PoolConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _pools(self) -> FleetConfig:
        names = [p.name for p in self.pools]
        models = [p.model for p in self.pools]
        for what, seq in (("name", names), ("model", models)):
            dup = {x for x in seq if seq.count(x) > 1}
            if dup:
                raise ValueError(f"pool {what}s must be unique; repeated: {', '.join(sorted(dup))}")
        served: dict[str, str] = {p.model: p.name for p in self.pools}
        for p in self.pools:
            for f in p.fallback_pools:
                if f not in names or f == p.name:
                    raise ValueError(f"pool {p.name!r}: fallback {f!r} is not another pool")
            if p.saturation is not None and not p.fallback:
                raise ValueError(f"pool {p.name!r}: saturation needs a fallback to overflow to")
            if p.hold_timeout_s > self.gateway.worker_shutdown_timeout_s:
                # an nginx reload retires the worker holding the connection, which closes it after this bound
                raise ValueError(
                    f"pool {p.name!r}: hold_timeout_s ({p.hold_timeout_s:g}) is longer than "
                    f"gateway.worker_shutdown_timeout_s ({self.gateway.worker_shutdown_timeout_s}): a request held "
                    "that long would be cut by the next nginx reload; raise worker_shutdown_timeout_s or shorten "
                    "the hold")
            for a in p.aliases:
                if a in served:
                    raise ValueError(f"pool {p.name!r}: alias {a!r} is already the model or an alias of "
                                     f"pool {served[a]!r}")
                served[a] = p.name
        for i, rule in enumerate(self.routing.rules):
            if rule.pool not in names:
                raise ValueError(f"routing.rules[{i}] ({rule.name}): pool {rule.pool!r} is not a pool")
            for m in rule.match.models:
                if m not in served:
                    raise ValueError(f"routing.rules[{i}] ({rule.name}): model {m!r} is no pool's model or alias")
        rule_names = [r.name for r in self.routing.rules]
        if len(set(rule_names)) != len(rule_names):
            raise ValueError("routing.rules: rule names must be unique")
        return self

    def pool(self, name: str) -> PoolConfig:
        return next(p for p in self.pools if p.name == name)

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every name a client may send as `model`: each pool's model and its aliases."""
        return tuple(m for p in self.pools for m in (p.model, *p.aliases))

    def routing_table(self) -> dict[str, Any]:
        """The static part of the gateway's routes.js (gateway/routing.py says how njs applies it): models and
        aliases, fallbacks with their caps, rules."""
        routes: dict[str, str] = {}
        for p in self.pools:
            routes[p.model] = p.name
            for a in p.aliases:
                routes[a] = p.name
        return {
            "routes": routes,
            "models": {p.name: p.model for p in self.pools},
            "fallback": {p.name: [{"pool": f.pool, "max_tokens": f.max_tokens} for f in p.fallback]
                         for p in self.pools if p.fallback},
            "rules": [
                {"name": r.name, "pool": r.pool, "models": list(r.match.models), "tiers": list(r.match.tiers),
                 "headers": dict(r.match.headers), "over": r.match.prompt_tokens_over,
                 "under": r.match.prompt_tokens_under}
                for r in self.routing.rules
            ],
            "chars_per_token": CHARS_PER_TOKEN,
            "state_stale_s": STATE_STALE_S,
        }


DEFAULT_CONFIG: dict[str, Any] = {
    "pools": [
        {
            "name": "chat",
            "model": "gpufleet-tiny-chat",
            "engine": "sim",
            "sim": {"profile": "tiny"},
            # a virtual slot on a CPU-only host (or a real GPU where NVML finds one): the GPU and cost
            # dashboards then show who holds what
            "gpus_per_replica": 1,
            "min_replicas": 1,
            "max_replicas": 4,
            "warm_pool": {"min": 1, "max": 2},
            "targets": {"concurrency": 6, "queue_depth": 2},
        }
    ],
    "gpus": {"source": "none"},
}


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_config(data: Any, source: str = "fleet.yaml") -> FleetConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as e:
        errs = e.errors()
        lines = []
        for err in errs:
            loc = err["loc"]
            # A list whose items failed also reports itself as too short: noise.
            if err["type"] == "too_short" and any(
                o["loc"][: len(loc)] == loc and len(o["loc"]) > len(loc) for o in errs
            ):
                continue
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {_field_path(loc)}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def _pool_files(cfg: FleetConfig, path: Path, base: Path) -> FleetConfig:
    """The files each pool names, relative to the fleet file: its executable and model file where they exist
    there, and its secret files, which must be readable now (a start that could not read one would fail in
    every replica instead)."""
    pools = []
    for i, p in enumerate(cfg.pools):
        # a local executable or model file named relative to the fleet file (a Hugging Face id stays as is)
        update: dict[str, Any] = {k: str((base / v).resolve()) for k in ("executable", "model_path")
                                  if (v := getattr(p, k)) and not Path(v).is_absolute() and (base / v).exists()}
        files = {}
        for name, f in p.secret_files.items():
            f = f if f.is_absolute() else base / f
            try:
                with open(f, "rb") as fh:
                    fh.read(1)
            except OSError as e:
                raise ConfigError(f"{path}: pools[{i}].secret_files.{name}: cannot read {f}: {e.strerror} (the "
                                  "autoscaler reads it as its own user; in Docker, uid 65534)") from None
            files[name] = f
        if files != p.secret_files:
            update["secret_files"] = files
        pools.append(p.model_copy(update=update) if update else p)
    return cfg.model_copy(update={"pools": tuple(pools)})


def load_config(path: Path | None) -> FleetConfig:
    """Whatever this accepts, starts: besides the schema, the files the config names are read here."""
    if path is None:
        return parse_config(DEFAULT_CONFIG, "built-in default")
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of thousands of digits
        raise ConfigError(f"{path}: a value YAML cannot read: {e}") from None
    cfg = parse_config(data, str(path))
    base = Path(path).parent
    tf = cfg.gpus.topology_file
    if tf is not None and not tf.is_absolute() and (base / tf).exists():
        # relative to the fleet file, as a user reading it would expect (else: to the working directory)
        cfg = cfg.model_copy(update={"gpus": cfg.gpus.model_copy(update={"topology_file": base / tf})})
        tf = cfg.gpus.topology_file
    if tf is not None and cfg.gpus.source in ("topology", "auto") and not Path(tf).is_file():
        raise ConfigError(f"{path}: gpus.topology_file: {tf} does not exist (relative paths are read from "
                          f"{base.resolve()} or the working directory)")
    if tf is not None and cfg.gpus.source == "topology":
        from autoscaler.gpus.topology import TopologyParseError, load_topology_file

        try:
            load_topology_file(Path(tf))
        except TopologyParseError as e:
            raise ConfigError(f"{path}: gpus.topology_file: {e}") from None
    cfg = _pool_files(cfg, Path(path), base)
    kf = cfg.gateway.auth.keys_file
    if kf is not None:
        if not kf.is_absolute() and (base / kf).exists():
            kf = base / kf
            auth = cfg.gateway.auth.model_copy(update={"keys_file": kf})
            cfg = cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update={"auth": auth})})
        if cfg.gateway.auth.enabled:
            from autoscaler.gateway.access import KeysError, load_keys

            try:
                load_keys(Path(kf))
            except KeysError as e:
                raise ConfigError(f"{path}: gateway.auth.keys_file: {e}") from None
    ut = cfg.gateway.upstream_template
    if ut is not None:
        if not ut.is_absolute() and (base / ut).exists():
            ut = base / ut
            cfg = cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update={"upstream_template": ut})})
        from autoscaler.gateway.render import PoolRoute, render_gateway

        try:
            render_gateway([PoolRoute("p", "m", ("127.0.0.1:1",))], ut)
        except Exception as e:
            raise ConfigError(f"{path}: gateway.upstream_template: {ut}: cannot render: "
                              f"{type(e).__name__}: {e}") from None
    return cfg

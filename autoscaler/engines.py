"""Engine presets: what the autoscaler must know to run, probe, scrape and stop each inference server.

A preset is data, read from each engine's own source (file and version next to each mapping), so a
pool says `engine: vllm` and gets the image, the argv, the readiness probe, the metric names behind
each signal, sleep mode, the stop signal and the weights-cache path. A pool overrides any part
(`executable`, `args`, `ready_path`, `metrics`, `env`, `image`). `resolve(pool)` gives the merged
result; everything here is pure.

Sources read (November/December 2026):
- vLLM: `vllm/v1/metrics/loggers.py` (PrometheusStatLogger: names, labels model_name/engine),
  `vllm/entrypoints/serve/instrumentator/health.py` (GET /health: 200 while the engine lives, 503 once it
  died; the port is bound only after the engine is built, i.e. the model is loaded),
  `vllm/entrypoints/serve/dev/sleep/api_router.py` (POST /sleep?level=, POST /wake_up, GET /is_sleeping,
  mounted only with VLLM_SERVER_DEV_MODE=1; the engine needs --enable-sleep-mode),
  `docker/Dockerfile` (ENTRYPOINT `python3 -m vllm.entrypoints.openai.api_server` in older releases,
  `vllm serve` in newer ones: so the preset sets the whole argv, never appends to the image's).
- SGLang: `python/sglang/srt/metrics/collector.py` (sglang:num_running_reqs, num_queue_reqs,
  token_usage, time_to_first_token_seconds, num_requests_total; with --enable-metrics),
  `python/sglang/srt/entrypoints/http_server.py` (GET /health = /health_generate: 503 while the server
  status is Starting, else a one-token generation awaited up to 20 s, answered after >= 1 s).
- TGI 3.3.7: `router/src/server.rs` (GET /health 503 while unhealthy, /metrics on the API port),
  `backends/v3/src/queue.rs`, `backends/v3/src/backend.rs` (tgi_queue_size, tgi_batch_current_size),
  `docs/source/reference/metrics.md` (tgi_request_success; no time-to-first-token histogram),
  `Dockerfile` (HF_HOME=/data, ENTRYPOINT /tgi-entrypoint.sh -> text-generation-launcher),
  `launcher/src/main.rs` (--model-id, --hostname, --port, --num-shard).
- llama.cpp (vendored in llama-cpp-python 0.3.36): `tools/server/server-task.cpp` (to_metrics:
  llamacpp:requests_processing, requests_deferred, token counters; no KV-cache, TTFT or request
  counter), `tools/server/server-http.cpp` (GET /health 503 "Loading model" until loaded),
  `.devops/cpu.Dockerfile` (ENTRYPOINT /app/llama-server); `--metrics` turns /metrics on.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from autoscaler.backend_auth import API_KEY, SCRAPE_KEY

if TYPE_CHECKING:
    from autoscaler.config import PoolConfig

EngineName = Literal["sim", "command", "vllm", "sglang", "tgi", "llamacpp"]
ENGINES: tuple[EngineName, ...] = ("sim", "command", "vllm", "sglang", "tgi", "llamacpp")

# the stack's own image runs sim replicas as nobody
NOBODY = "65534:65534"


@dataclass(frozen=True)
class MetricNames:
    """Sample names (as written on /metrics) behind each of our signals; an empty tuple: not exported.

    running/waiting are gauges summed over their series; kv_cache_usage a 0-1 gauge (the max);
    ttft_histogram a histogram's base name (its `_bucket` samples are read); requests_total a counter of
    finished requests (its samples summed)."""

    running: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    kv_cache_usage: tuple[str, ...] = ()
    ttft_histogram: tuple[str, ...] = ()
    requests_total: tuple[str, ...] = ()

    def missing_signals(self) -> tuple[str, ...]:
        """Our signals these names cannot give (config.SIGNALS' order)."""
        needs = {"queue_depth": self.waiting, "concurrency": self.running, "kv_cache_usage": self.kv_cache_usage,
                 "ttft_p95_s": self.ttft_histogram, "request_rate": self.requests_total}
        return tuple(s for s, names in needs.items() if not names)


VLLM_METRICS = MetricNames(
    running=("vllm:num_requests_running",),
    waiting=("vllm:num_requests_waiting",),
    # gpu_cache_usage_perc: the name before vLLM 0.9 (deprecated there); one or the other is exported
    kv_cache_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    ttft_histogram=("vllm:time_to_first_token_seconds",),
    requests_total=("vllm:request_success_total",),
)
SGLANG_METRICS = MetricNames(
    running=("sglang:num_running_reqs",),
    waiting=("sglang:num_queue_reqs",),
    kv_cache_usage=("sglang:token_usage",),
    ttft_histogram=("sglang:time_to_first_token_seconds",),
    requests_total=("sglang:num_requests_total",),
)
TGI_METRICS = MetricNames(
    running=("tgi_batch_current_size",),
    waiting=("tgi_queue_size",),
    # metrics-exporter-prometheus writes counters without a `_total` suffix
    requests_total=("tgi_request_success", "tgi_request_success_total"),
)
LLAMACPP_METRICS = MetricNames(
    running=("llamacpp:requests_processing",),
    waiting=("llamacpp:requests_deferred",),
)
METRICS: Mapping[str, MetricNames] = {"vllm": VLLM_METRICS, "sglang": SGLANG_METRICS, "tgi": TGI_METRICS,
                                      "llamacpp": LLAMACPP_METRICS}


@dataclass(frozen=True)
class Preset:
    name: EngineName
    # argv with {model} (the served name), {model_path} (what it loads), {host}, {port}, {replica_id}, {tp}
    # (GPUs per replica, at least 1). The whole command: in Docker it replaces the image's ENTRYPOINT.
    argv: tuple[str, ...]
    image: str | None = None  # None: the stack's own image (sim, command)
    ready_path: str = "/health"  # 200 = loaded and serving; anything else, or no answer = not yet
    ready_timeout_s: float = 2.0  # one readiness probe's deadline (SGLang's /health takes >= 1 s)
    metrics: MetricNames = VLLM_METRICS
    sleep: bool = False  # vLLM's sleep-mode endpoints (/sleep, /wake_up, /is_sleeping)
    sleep_args: tuple[str, ...] = ()  # added when the pool keeps warm replicas asleep
    sleep_env: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str = "SIGTERM"
    stop_grace_s: float = 10.0  # SIGTERM to SIGKILL
    cache_path: str | None = None  # where the weights cache volume is mounted (Docker)
    env: Mapping[str, str] = field(default_factory=dict)
    shm_size: str | None = None  # Docker's /dev/shm (its default, 64 MB, is too small for NCCL)
    user: str | None = None  # None: the image's own user
    read_only_root: bool = True
    start_timeout_s: float = 300.0  # not ready by then: stopped, its GPUs freed, the crash backoff applies
    hf_token_env: str | None = None  # the env var naming a file with the Hugging Face token (secret hf_token)
    # how the engine demands a key (backend_auth: "{api_key}" the pool's, "{scrape_key}" Prometheus'); neither:
    # it takes none, and anyone on the backend network reaches it keyless (SECURITY.md says which)
    key_env: Mapping[str, str] = field(default_factory=dict)
    key_args: tuple[str, ...] = ()


_TP = "{tp}"
PRESETS: Mapping[str, Preset] = {
    # the stack's own OpenAI server on the sim engine: vLLM's contract (/health once loaded, vLLM's names)
    "sim": Preset("sim", argv=(), sleep=True, user=NOBODY, start_timeout_s=120.0,
                  key_env={"GPUFLEET_API_KEY": API_KEY, "GPUFLEET_METRICS_KEY": SCRAPE_KEY}),
    # any OpenAI-compatible server the user names; vLLM's metric names unless `metrics` says otherwise
    "command": Preset("command", argv=(), user=NOBODY),
    "vllm": Preset(
        "vllm", image="vllm/vllm-openai:v0.11.0",
        argv=("vllm", "serve", "{model_path}", "--served-model-name", "{model}", "--host", "{host}",
              "--port", "{port}", "--tensor-parallel-size", _TP),
        metrics=VLLM_METRICS, sleep=True, sleep_args=("--enable-sleep-mode",),
        sleep_env={"VLLM_SERVER_DEV_MODE": "1"}, stop_grace_s=30.0, cache_path="/root/.cache/huggingface",
        # the image runs as root and writes compile/kernel caches under /root/.cache and site-packages
        read_only_root=False, shm_size="8g", start_timeout_s=1800.0, hf_token_env="HF_TOKEN_PATH",
        env={"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
        # guards the /v1 routes only (vllm/entrypoints/openai/api_server.py, AuthenticationMiddleware)
        key_env={"VLLM_API_KEY": API_KEY}),
    "sglang": Preset(
        "sglang", image="lmsysorg/sglang:v0.5.4",
        argv=("python3", "-m", "sglang.launch_server", "--model-path", "{model_path}", "--served-model-name",
              "{model}", "--host", "{host}", "--port", "{port}", "--tp-size", _TP, "--enable-metrics"),
        metrics=SGLANG_METRICS, ready_timeout_s=25.0, stop_grace_s=30.0, cache_path="/root/.cache/huggingface",
        read_only_root=False, shm_size="8g", start_timeout_s=1800.0, hf_token_env="HF_TOKEN_PATH",
        # every route but /health* and /metrics (python/sglang/srt/utils.py, add_api_key_middleware); no env var
        key_args=("--api-key", API_KEY)),
    "tgi": Preset(
        "tgi", image="ghcr.io/huggingface/text-generation-inference:3.3.7",
        argv=("/tgi-entrypoint.sh", "--model-id", "{model_path}", "--hostname", "{host}", "--port", "{port}",
              "--num-shard", _TP),
        metrics=TGI_METRICS, stop_grace_s=30.0, cache_path="/data", read_only_root=False, shm_size="8g",
        start_timeout_s=1800.0, hf_token_env="HF_TOKEN_PATH"),
    "llamacpp": Preset(
        "llamacpp", image="ghcr.io/ggml-org/llama.cpp:server",
        argv=("/app/llama-server", "--model", "{model_path}", "--alias", "{model}", "--host", "{host}",
              "--port", "{port}", "--metrics"),
        metrics=LLAMACPP_METRICS, user=NOBODY, start_timeout_s=300.0,
        # a comma-separated list, demanded on every route but /health and /models, /metrics included
        # (tools/server/server-http.cpp): Prometheus' scrape key is the second
        key_env={"LLAMA_API_KEY": f"{API_KEY},{SCRAPE_KEY}"}),
}


@dataclass(frozen=True)
class Engine:
    """A pool's engine: its preset with the pool's overrides applied."""

    preset: Preset
    argv: tuple[str, ...]  # placeholders left for the runtime ({host}, {port}, {replica_id})
    image: str | None
    ready_path: str
    ready_timeout_s: float
    metrics: MetricNames
    sleep: bool
    env: Mapping[str, str]
    stop_signal: str
    stop_grace_s: float
    start_timeout_s: float
    volumes: Mapping[str, str]  # stack-owned named volume -> path in the replica
    shm_size: str | None
    user: str | None
    read_only_root: bool
    key_env: Mapping[str, str]
    key_args: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.preset.name

    def missing_signals(self) -> tuple[str, ...]:
        return self.metrics.missing_signals()


def sim_argv(pool: PoolConfig, python: str) -> tuple[str, ...]:
    """`python -m inference` with the pool's sim settings (the runtime fills {host}, {port}, {replica_id})."""
    s = pool.sim
    argv = [python, "-m", "inference", "--host", "{host}", "--port", "{port}",
            "--model", "{model}", "--profile", s.profile, "--replica-id", "{replica_id}"]
    for flag, val in (("--load-time", s.load_time_s), ("--max-num-seqs", s.max_num_seqs),
                      ("--step-base", s.step_base_s), ("--step-per-seq", s.step_per_seq_s),
                      ("--kv-capacity", s.kv_capacity_tokens), ("--max-waiting", s.max_waiting),
                      ("--wake-time", s.wake_time_s)):
        if val is not None:
            argv += [flag, str(val)]
    return tuple(argv)


def _sim_start_timeout(pool: PoolConfig) -> float:
    """Room for the sim model's load time (the large profiles take minutes), three times over."""
    from inference.engines.profiles import PROFILES

    load = pool.sim.load_time_s if pool.sim.load_time_s is not None else PROFILES[pool.sim.profile].load_time_s
    return max(PRESETS["sim"].start_timeout_s, 3 * load + 30)


def resolve(pool: PoolConfig, python: str = sys.executable) -> Engine:
    """The engine pool runs, overrides applied. python: the interpreter sim replicas run with (the runtime
    swaps it for the image's own in Docker)."""
    pre = PRESETS[pool.engine]
    start_timeout = pre.start_timeout_s
    if pool.engine == "sim":
        argv = sim_argv(pool, python)
        start_timeout = _sim_start_timeout(pool)
    elif pool.engine == "command":
        argv = tuple(pool.command or ())
    else:
        tp = str(max(pool.gpus_per_replica, 1))
        fixed = {"{model_path}": pool.model_path or pool.model, "{tp}": tp}
        argv = tuple(fixed.get(a, a) for a in pre.argv)
        if pool.executable:
            argv = (pool.executable, *argv[1:])
    asleep = pool.warm_pool.asleep > 0
    argv = argv + tuple(pool.args) + (pre.sleep_args if asleep else ())
    env = dict(pre.env)
    if asleep:
        env.update(pre.sleep_env)
    if pre.hf_token_env and "hf_token" in pool.secret_files:
        env[pre.hf_token_env] = "{secrets}/hf_token"
    env.update(pool.env)
    metrics = pre.metrics if pool.metrics is None else pool.metrics.apply(pre.metrics)
    volumes = dict(pool.volumes) if pool.volumes is not None else (
        {"weights": pre.cache_path} if pre.cache_path else {})
    return Engine(
        preset=pre, argv=argv, image=pool.image or pre.image, ready_path=pool.ready_path or pre.ready_path,
        ready_timeout_s=pre.ready_timeout_s, metrics=metrics, sleep=pre.sleep if pool.sleep is None else pool.sleep,
        env=env, stop_signal=pre.stop_signal, stop_grace_s=pool.stop_grace_s or pre.stop_grace_s,
        start_timeout_s=pool.start_timeout_s or start_timeout, volumes=volumes,
        shm_size=pool.shm_size or pre.shm_size, user=pre.user,
        read_only_root=pre.read_only_root if pool.read_only_root is None else pool.read_only_root,
        key_env=pre.key_env, key_args=pre.key_args,
    )



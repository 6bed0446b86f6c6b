"""Replica metrics under vLLM V1's names and labels, so dashboards and the
autoscaler read our replicas and real vLLM containers the same way."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inference.engines.base import EngineStats

# vLLM's: a pool's TTFT SLO is one of these bounds, so PromQL can read attainment off one bucket
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class ReplicaMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name", "engine"]
        r = self.registry
        self.running = Gauge("vllm:num_requests_running", "Requests in the running batch",
                             labels, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled",
                             labels, registry=r)
        self.kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = full", labels, registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token",
                              labels, buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Time between output tokens",
                             labels, buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency",
                             labels, buckets=_E2E_BUCKETS, registry=r)
        self.success = Counter("vllm:request_success", "Finished requests",
                               [*labels, "finished_reason"], registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefilled tokens", labels, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens", labels,
                                         registry=r)
        self.gpu_mem = Gauge("gpufleet_sim_gpu_memory_bytes", "GPU memory the engine holds (weights + KV pool)",
                             labels, registry=r)
        self.host_mem = Gauge("gpufleet_sim_host_memory_bytes", "Weights offloaded to host RAM (sleep mode)",
                              labels, registry=r)
        self._labels = {"model_name": model_name, "engine": "0"}

    def observe_stats(self, s: EngineStats) -> None:
        self.running.labels(**self._labels).set(s.running)
        self.waiting.labels(**self._labels).set(s.waiting)
        self.kv.labels(**self._labels).set(s.kv_cache_usage)
        self.gpu_mem.labels(**self._labels).set(s.gpu_memory_bytes)
        self.host_mem.labels(**self._labels).set(s.host_memory_bytes)

    def finished(self, *, ttft: float, e2e: float, gaps: list[float], prompt: int, generated: int,
                 reason: str) -> None:
        lb = self._labels
        self.ttft.labels(**lb).observe(ttft)
        self.e2e.labels(**lb).observe(e2e)
        h = self.itl.labels(**lb)
        for g in gaps:
            h.observe(g)
        self.success.labels(**lb, finished_reason=reason).inc()
        self.prompt_tokens.labels(**lb).inc(prompt)
        self.generation_tokens.labels(**lb).inc(generated)

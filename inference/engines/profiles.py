"""Named parameter sets for the sim engine.

The GPU profiles are calibrated on public vLLM numbers: decode step latency at
batch 1 and its growth with batch size, prefill throughput, KV capacity left
after the weights, and the time from container start to a loaded model. They are
coarse on purpose: the autoscaler needs the shape (queueing, saturation,
cold start), not a cycle-accurate GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class SimProfile:
    max_num_seqs: int  # continuous-batching slots
    kv_capacity_tokens: int  # KV cache size, in tokens
    step_base_s: float  # one decode step at batch size 1
    step_per_seq_s: float  # extra step time per running sequence
    prefill_per_token_s: float  # prefill cost, added to the step that admits the prompt
    load_time_s: float  # model load (cold start): the port is bound, and /health answers, after it
    max_model_len: int = 8192
    # Lifecycle around the engine, for `gpufleet simulate` (the engine itself does not use them):
    startup_s: float = 0.0  # process/container start until the load begins
    reload_s: float = 0.03  # gateway reload (render + nginx -t + SIGHUP) until a change routes
    stop_s: float = 1.0  # graceful stop: the GPUs stay held this long
    wake_s: float | None = None  # a sleeping replica back to serving (vLLM sleep mode level 1)
    # Memory, for sleep mode's effect: awake, the weights and the KV pool are on the GPU; asleep
    # (level 1) the weights are in host RAM and the GPU memory is free.
    weights_gib: float = 1.0
    kv_bytes_per_token: int = 128 * 1024  # Llama-3-8B with GQA, fp16

    def with_overrides(self, **kw: float | int | None) -> SimProfile:
        # dataclasses.replace checks each name at run time; a field's own type is not known here
        changes: dict[str, Any] = {k: v for k, v in kw.items() if v is not None}
        return replace(self, **changes)


PROFILES: dict[str, SimProfile] = {
    # Small and quick: what CI and a laptop run. Capacity ~ 8 seqs * 1/(step) tokens/s.
    "tiny": SimProfile(
        max_num_seqs=8,
        kv_capacity_tokens=16384,
        step_base_s=0.020,
        step_per_seq_s=0.0025,
        prefill_per_token_s=0.00002,
        load_time_s=2.0,
        max_model_len=4096,
        # measured on the 2-core CI box: python + imports until the load starts (BENCHMARKS.md, fidelity)
        startup_s=1.0,
        reload_s=0.021,  # BENCHMARKS.md: render + nginx -t + SIGHUP, p50 20.9 ms (local nginx)
        weights_gib=0.5,
        kv_bytes_per_token=16 * 1024,
    ),
    # Llama-3-8B on one H100 (vLLM): ~12 ms/step at batch 1, ~35 ms at 256,
    # ~12k prefill tok/s, ~450k KV tokens at 0.9 memory utilisation, ~40 s to load.
    "llama3-8b-h100": SimProfile(
        max_num_seqs=256,
        kv_capacity_tokens=450_000,
        step_base_s=0.012,
        step_per_seq_s=0.00009,
        prefill_per_token_s=0.00008,
        load_time_s=40.0,
        startup_s=5.0,  # container start + CUDA context
        reload_s=0.116,  # BENCHMARKS.md: docker exec nginx -t + SIGHUP
        stop_s=5.0,
        # vLLM sleep mode level 1: wake 0.1-6 s vs a 30-100+ s reload (vLLM blog, Oct 2025)
        wake_s=2.0,
        weights_gib=16.0,
    ),
    # Llama-3-8B (fp16) on one 24 GB A10G (AWS g5): estimated from the card, not measured: decode is
    # memory-bound, 16 GB of weights at ~600 GB/s → ~27 ms/step at batch 1; prefill at ~70 of the
    # 125 fp16 TFLOPS, 16 GFLOP/token → ~0.23 ms/token; ~5 GB left for KV at 128 KiB/token (GQA)
    # → ~38k tokens; 30 s from container start to serving (local NVMe).
    "llama3-8b-a10g": SimProfile(
        max_num_seqs=64,
        kv_capacity_tokens=38_000,
        step_base_s=0.027,
        step_per_seq_s=0.0002,
        prefill_per_token_s=0.00023,
        load_time_s=25.0,
        startup_s=5.0,
        reload_s=0.116,
        stop_s=5.0,
        wake_s=3.0,
        weights_gib=16.0,
    ),
    # Llama-3-70B, TP=4 on H100 NVLink: ~30 ms/step at batch 1, ~5k prefill tok/s,
    # ~900k KV tokens across the four cards, ~3 min to load from local disk.
    "llama3-70b-4xh100": SimProfile(
        max_num_seqs=256,
        kv_capacity_tokens=900_000,
        step_base_s=0.030,
        step_per_seq_s=0.00015,
        prefill_per_token_s=0.0002,
        load_time_s=180.0,
        startup_s=10.0,
        reload_s=0.116,
        stop_s=10.0,
        # llm-d: hot start 4.0 s vs 85.3 s cold (Qwen3-32B, H100); a 70B on four cards, a little more
        wake_s=6.0,
        weights_gib=140.0,
        kv_bytes_per_token=320 * 1024,
    ),
}

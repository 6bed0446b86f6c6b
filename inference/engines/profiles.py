"""Named parameter sets for the sim engine.

The GPU profiles are calibrated on public vLLM numbers: decode step latency at
batch 1 and its growth with batch size, prefill throughput, KV capacity left
after the weights, and the time from container start to a loaded model. They are
coarse on purpose: the autoscaler needs the shape (queueing, saturation,
cold start), not a cycle-accurate GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SimProfile:
    max_num_seqs: int  # continuous-batching slots
    kv_capacity_tokens: int  # KV cache size, in tokens
    step_base_s: float  # one decode step at batch size 1
    step_per_seq_s: float  # extra step time per running sequence
    prefill_per_token_s: float  # prefill cost, added to the step that admits the prompt
    load_time_s: float  # model load (cold start) before /ready turns 200
    max_model_len: int = 8192

    def with_overrides(self, **kw: float | int | None) -> SimProfile:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


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
    ),
}

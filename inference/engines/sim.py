"""A simulated LLM engine: continuous batching on the asyncio clock.

One scheduler task runs decode steps. Each step admits waiting requests while a
batch slot and their KV reservation (prompt + max_tokens) are free, sleeps for
the step time (which grows with batch size, plus prefill for newly admitted
prompts), then emits one token to every running sequence. Requests wait while
the KV cache is full, as in vLLM, so queue depth and KV usage behave like the
real metrics the autoscaler reads.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from inference.engines.base import EngineNotReady, EngineStats, PromptTooLong
from inference.engines.profiles import SimProfile

_TEXT = (
    "the quick brown fox jumps over a lazy dog while gpus hum in the rack and "
    "requests queue politely at the gateway waiting for a warm replica to answer"
)
_WORDS = tuple(_TEXT.split(" "))


@dataclass
class _Seq:
    prompt_tokens: int
    max_tokens: int
    seed: int
    out: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    generated: int = 0
    cancelled: bool = False

    @property
    def kv_need(self) -> int:
        return self.prompt_tokens + self.max_tokens


class SimEngine:
    name = "sim"

    def __init__(self, profile: SimProfile) -> None:
        self.profile = profile
        self.max_model_len = profile.max_model_len
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._kv_used = 0
        self._loaded = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # vLLM sleep mode (level 1): the weights offloaded to host RAM, the GPU memory freed
        self.sleeping = False
        self._waking: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self._loaded

    async def load(self) -> None:
        await asyncio.sleep(self.profile.load_time_s)
        self._loaded = True
        self._task = asyncio.create_task(self._schedule(), name="sim-scheduler")

    def stats(self) -> EngineStats:
        p = self.profile
        cap = p.kv_capacity_tokens
        weights = p.weights_gib * 2**30
        on_gpu = self._loaded and not self.sleeping
        return EngineStats(
            running=len(self._running),
            waiting=sum(1 for s in self._waiting if not s.cancelled),  # a hung-up client is no load
            kv_cache_usage=min(1.0, self._kv_used / cap) if cap else 0.0,
            gpu_memory_bytes=weights + cap * p.kv_bytes_per_token if on_gpu else 0.0,
            host_memory_bytes=weights if self._loaded and self.sleeping else 0.0,
        )

    def sleep(self) -> None:
        """Offload: only an idle engine sleeps (vLLM would abort what runs; we refuse instead)."""
        if not self._loaded:
            raise EngineNotReady("model is still loading")
        if self._running or any(not s.cancelled for s in self._waiting):
            raise RuntimeError("requests are running; drain before sleeping")
        self.sleeping = True

    async def wake_up(self) -> None:
        """Weights back on the GPU: `wake_s` (default a tenth of the load time, at least 0.2 s)."""
        if not self.sleeping:
            return
        if self._waking is None or self._waking.done():
            self._waking = asyncio.create_task(self._do_wake())
        await asyncio.shield(self._waking)

    async def _do_wake(self) -> None:
        p = self.profile
        await asyncio.sleep(p.wake_s if p.wake_s is not None else max(0.2, p.load_time_s / 10))
        self.sleeping = False

    async def generate(self, prompt: str, prompt_tokens: int, max_tokens: int) -> AsyncGenerator[str, None]:
        if not self._loaded:
            raise EngineNotReady("model is still loading")
        if self.sleeping:
            raise EngineNotReady("model is sleeping (POST /wake_up)")
        need = prompt_tokens + max_tokens
        if need > min(self.max_model_len, self.profile.kv_capacity_tokens):
            raise PromptTooLong(
                f"This model's maximum context length is {self.max_model_len} tokens. "
                f"However, you requested {need} tokens ({prompt_tokens} in the prompt, "
                f"{max_tokens} for the completion)."
            )
        seed = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=4).digest(), "big")
        seq = _Seq(prompt_tokens=prompt_tokens, max_tokens=max_tokens, seed=seed)
        self._waiting.append(seq)
        self._wake.set()
        try:
            while True:
                tok = await seq.out.get()
                if tok is None:
                    return
                yield tok
        finally:
            # A client that goes away frees its slot at the next step.
            seq.cancelled = True

    def _admit(self) -> int:
        admitted_prompt = 0
        while self._waiting and len(self._running) < self.profile.max_num_seqs:
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                continue
            if self._kv_used + seq.kv_need > self.profile.kv_capacity_tokens:
                break  # FCFS: wait for KV space rather than starve big prompts
            self._waiting.popleft()
            self._running.append(seq)
            self._kv_used += seq.kv_need
            admitted_prompt += seq.prompt_tokens
        return admitted_prompt

    async def _schedule(self) -> None:
        p = self.profile
        while True:
            if not self._running and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
            prefill = self._admit()
            if not self._running:
                await asyncio.sleep(p.step_base_s)
                continue
            step = p.step_base_s + p.step_per_seq_s * len(self._running) + p.prefill_per_token_s * prefill
            await asyncio.sleep(step)
            still: list[_Seq] = []
            for seq in self._running:
                if seq.cancelled:
                    self._kv_used -= seq.kv_need
                    continue
                word = _WORDS[(seq.seed + seq.generated * 7) % len(_WORDS)]
                seq.out.put_nowait(word if seq.generated == 0 else " " + word)
                seq.generated += 1
                if seq.generated >= seq.max_tokens:
                    seq.out.put_nowait(None)
                    self._kv_used -= seq.kv_need
                else:
                    still.append(seq)
            self._running = still

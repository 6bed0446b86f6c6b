"""The contract between the HTTP layer and an engine."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol


class EngineNotReady(RuntimeError):
    """The model is still loading (or failed to load)."""


class PromptTooLong(ValueError):
    """prompt + max_tokens exceeds what the engine can ever hold."""


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_cache_usage: float  # 0..1, like vllm:kv_cache_usage_perc
    gpu_memory_bytes: float = 0.0  # what the engine holds on the GPU (weights + KV pool)
    host_memory_bytes: float = 0.0  # weights offloaded to host RAM (sleep mode)


class Engine(Protocol):
    name: str
    max_model_len: int

    @property
    def ready(self) -> bool: ...

    async def load(self) -> None: ...

    def stats(self) -> EngineStats: ...

    # an async generator: a client that hangs up closes it (aclose) and frees its batch slot
    def generate(self, prompt: str, prompt_tokens: int, max_tokens: int) -> AsyncGenerator[str, None]: ...

    # vLLM's sleep mode: weights off the GPU (RuntimeError while requests run), then back
    def sleep(self) -> None: ...

    async def wake_up(self) -> None: ...

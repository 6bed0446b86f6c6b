"""A replica on simulated time: the sim engine's continuous batching, event by event.

The same model as `inference.engines.sim.SimEngine`, with the same profile:
each step admits waiting requests (FCFS) while a batch slot and their KV
reservation (prompt + max_tokens) are free, takes step_base + step_per_seq ×
batch (+ prefill_per_token × the prompts admitted), and gives every running
request one token. Between two changes of the batch every step takes the same
time, so the replica jumps straight to the next completion (or, when a request
waits for a slot that is free, to the next step boundary) instead of stepping:
a 58-minute trace costs one event per admission and completion, not per token.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

from autoscaler.loop.signals import ReplicaSample
from inference.engines.profiles import SimProfile
from inference.metrics import TTFT_BUCKETS

_EPS = 1e-9


@dataclass(slots=True)
class SimRequest:
    i: int
    at: float
    prompt: int
    max_tokens: int
    stream: bool
    end_step: int = 0
    first_token: float | None = None
    done: float | None = None
    error: str | None = None

    @property
    def kv_need(self) -> int:
        return self.prompt + self.max_tokens


class SimReplica:
    def __init__(self, rid: str, profile: SimProfile) -> None:
        self.id = rid
        self.p = profile
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.kv_used = 0
        self.steps = 0  # steps completed by seg_start
        self.seg_start = 0.0  # the current batch began its first step here
        self.seg_first = 0.0  # that step's length (with the prefill of the prompts it admitted)
        self.seg_dt = 0.0  # every later step's length, while the batch stays the same
        self.wake_at = math.inf  # the next step boundary that changes something
        self.requests_total = 0
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)

    @property
    def load(self) -> int:
        return len(self.running) + len(self.waiting)

    def _steps_by(self, t: float) -> int:
        """Steps of the current batch completed by time t."""
        if not self.running or t < self.seg_start + self.seg_first - _EPS:
            return 0
        return 1 + int((t - self.seg_start - self.seg_first) / self.seg_dt + _EPS)

    def _admissible(self) -> bool:
        return (bool(self.waiting) and len(self.running) < self.p.max_num_seqs
                and self.kv_used + self.waiting[0].kv_need <= self.p.kv_capacity_tokens)

    def enqueue(self, req: SimRequest, now: float, done: list[SimRequest]) -> None:
        self.waiting.append(req)
        if not self.running:
            # an idle engine starts a step now, with every request that arrives at this instant
            self.wake_at = min(self.wake_at, now)
        elif len(self.waiting) == 1 and self._admissible():
            # joins at the end of the step in progress
            self.wake_at = min(self.wake_at, self.seg_start + self.seg_first + self._steps_by(now) * self.seg_dt)

    def wake(self, t: float, done: list[SimRequest]) -> None:
        """At a step boundary: finish what is done, admit what fits, plan the next boundary."""
        p = self.p
        if self.running:
            self.steps += self._steps_by(t)
            still = []
            for r in self.running:
                if r.end_step <= self.steps:
                    r.done = t
                    self.kv_used -= r.kv_need
                    self.requests_total += 1
                    done.append(r)
                else:
                    still.append(r)
            self.running = still
        prefill = 0
        admitted = []
        while self._admissible():
            r = self.waiting.popleft()
            r.end_step = self.steps + r.max_tokens
            self.running.append(r)
            self.kv_used += r.kv_need
            prefill += r.prompt
            admitted.append(r)
        if not self.running:
            self.wake_at = math.inf
            return
        self.seg_start = t
        self.seg_dt = p.step_base_s + p.step_per_seq_s * len(self.running)
        self.seg_first = self.seg_dt + p.prefill_per_token_s * prefill
        first = t + self.seg_first
        for r in admitted:
            r.first_token = first
            self.ttft_counts[bisect.bisect_left(TTFT_BUCKETS, first - r.at)] += 1
        k = min(r.end_step for r in self.running) - self.steps
        self.wake_at = t + self.seg_first + (k - 1) * self.seg_dt

    def fail_all(self, why: str, t: float) -> list[SimRequest]:
        """The replica goes away: what it holds fails."""
        lost = [*self.running, *self.waiting]
        for r in lost:
            r.error = why
            r.done = t
        self.running, self.waiting = [], deque()
        self.kv_used = 0
        self.wake_at = math.inf
        return lost

    def sample(self, t: float, with_ttft: bool) -> ReplicaSample:
        buckets: tuple[tuple[float, float], ...] = ()
        if with_ttft:
            acc = 0
            out = []
            for le, c in zip((*TTFT_BUCKETS, math.inf), self.ttft_counts, strict=True):
                acc += c
                out.append((le, float(acc)))
            buckets = tuple(out)
        return ReplicaSample(t, float(len(self.running)), float(len(self.waiting)),
                             min(1.0, self.kv_used / self.p.kv_capacity_tokens), buckets, float(self.requests_total))

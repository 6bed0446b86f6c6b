"""Scale-test scenarios: YAML files, validated like fleet.yaml.

A scenario is a traffic profile (step, ramp, sine, spike, or trace replay),
request shapes (prompt/output length distributions, streaming share), a
client concurrency cap and SLOs. `arrivals()` turns it into an open-loop
schedule: pure, seeded, the same every time. A scenario of several models has
`streams` instead of one profile: each its model and profile (its lengths too,
if it says so), all running at once; `Scenario.stream(i)` is stream i as a
scenario of its own.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autoscaler.config import ConfigError, _field_path
from autoscaler.paths import shared_root
from autoscaler.scaletest.loadgen import Arrival
from autoscaler.scaletest.traces import load_trace

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


class _S(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_S):
    type: Literal["step"]
    base_rps: float = Field(ge=0)
    peak_rps: float = Field(ge=0)
    at_s: float = Field(ge=0)
    until_s: float | None = None  # back to base after this (default: peak to the end)


class Ramp(_S):
    type: Literal["ramp"]
    from_rps: float = Field(ge=0)
    to_rps: float = Field(ge=0)


class Sine(_S):
    """A diurnal cycle compressed into period_s."""

    type: Literal["sine"]
    mean_rps: float = Field(ge=0)
    amplitude_rps: float = Field(ge=0)
    period_s: float = Field(gt=0)


class Spike(_S):
    type: Literal["spike"]
    base_rps: float = Field(ge=0)
    spike_rps: float = Field(ge=0)
    at_s: float = Field(ge=0)
    spike_s: float = Field(gt=0)


class Trace(_S):
    type: Literal["trace"]
    path: Path
    format: Literal["auto", "azure", "mooncake"] = "auto"
    start_s: float = Field(default=0, ge=0)  # offset into the trace
    time_compression: float = Field(default=1.0, gt=0)  # 10 = ten trace seconds per second
    rate_scale: float = Field(default=1.0, gt=0)  # copies per trace request (fractional: random)


Profile = Annotated[Step | Ramp | Sine | Spike | Trace, Field(discriminator="type")]


class Lengths(_S):
    dist: Literal["fixed", "uniform", "lognormal"] = "fixed"
    mean: int = Field(default=32, ge=1)
    min: int = Field(default=1, ge=1)
    max: int = Field(default=4096, ge=1)
    sigma: float = Field(default=0.5, gt=0)  # lognormal shape

    def draw(self, rng: random.Random) -> int:
        if self.dist == "fixed":
            v = self.mean
        elif self.dist == "uniform":
            v = rng.randint(self.min, self.max)
        else:
            mu = math.log(self.mean) - self.sigma**2 / 2
            v = int(round(rng.lognormvariate(mu, self.sigma)))
        return max(self.min, min(self.max, v))


class Slo(_S):
    success_rate: float = Field(default=0.999, ge=0, le=1)
    ttft_p95_s: float | None = Field(default=None, gt=0)
    e2e_p95_s: float | None = Field(default=None, gt=0)


class Stream(_S):
    """One model's traffic in a scenario of several: what it does not say, it takes from the scenario."""

    model: str = Field(min_length=1)
    profile: Profile
    prompt_tokens: Lengths | None = None
    output_tokens: Lengths | None = None
    stream_share: float | None = Field(default=None, ge=0, le=1)
    slo: Slo | None = None  # e.g. batch work: done within minutes, whatever its first token


class Scenario(_S):
    name: str
    description: str = ""
    duration_s: float = Field(gt=0, le=7200)
    profile: Profile | None = None  # one model's traffic; or `streams`, several models' at once
    streams: tuple[Stream, ...] = ()
    model: str | None = None  # default: the first model the gateway lists
    prompt_tokens: Lengths = Lengths(mean=64)
    output_tokens: Lengths = Lengths(mean=32)
    # Trace lengths are capped to what the pool's model accepts; recorded in the report.
    max_prompt_tokens: int = Field(default=2048, ge=1)
    max_output_tokens: int = Field(default=256, ge=1)
    stream_share: float = Field(default=1.0, ge=0, le=1)
    max_in_flight: int = Field(default=512, ge=1)
    # how long a client waits for an answer (its first byte, or the next one of a stream); raise it for
    # pools whose requests may wait for a GPU (best-effort pools at zero, held by the activator)
    request_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    seed: int = 0
    slo: Slo = Slo()

    @model_validator(mode="after")
    def _one_kind(self) -> Scenario:
        if (self.profile is None) == (not self.streams):
            raise ValueError("give either `profile` (one model) or `streams` (several models), not both or neither")
        if self.streams and self.model is not None:
            raise ValueError("`model` goes in each stream when there are streams")
        models = [x.model for x in self.streams]
        if len(set(models)) != len(models):
            raise ValueError("each stream is one model's: a model appears twice")
        return self

    def stream(self, i: int) -> Scenario:
        """Stream i as a one-model scenario (its own seed, the scenario's SLOs and caps)."""
        x = self.streams[i]
        return self.model_copy(update={
            "name": f"{self.name}/{x.model}", "profile": x.profile, "streams": (), "model": x.model,
            "prompt_tokens": x.prompt_tokens or self.prompt_tokens,
            "output_tokens": x.output_tokens or self.output_tokens,
            "stream_share": self.stream_share if x.stream_share is None else x.stream_share,
            "slo": x.slo or self.slo, "seed": self.seed + 1 + i})

    def rate_at(self, t: float) -> float:
        p = self.profile
        if isinstance(p, Step):
            return p.peak_rps if p.at_s <= t < (p.until_s if p.until_s is not None else math.inf) else p.base_rps
        if isinstance(p, Ramp):
            return p.from_rps + (p.to_rps - p.from_rps) * min(t / self.duration_s, 1.0)
        if isinstance(p, Sine):
            return max(0.0, p.mean_rps + p.amplitude_rps * math.sin(2 * math.pi * t / p.period_s - math.pi / 2))
        if isinstance(p, Spike):
            return p.spike_rps if p.at_s <= t < p.at_s + p.spike_s else p.base_rps
        raise TypeError("trace profiles have no rate function")


def arrivals(sc: Scenario, base_dir: Path | None = None) -> list[Arrival]:
    """The open-loop schedule: Poisson arrivals at the profile's rate (thinning), or the trace's own times.
    (A scenario of several streams: each stream's, `arrivals(sc.stream(i))`.)"""
    if sc.profile is None:
        raise ValueError(f"scenario {sc.name} has several streams: take arrivals of each (Scenario.stream)")
    rng = random.Random(sc.seed)
    p = sc.profile
    out: list[Arrival] = []
    if isinstance(p, Trace):
        path = p.path if p.path.is_absolute() or base_dir is None else base_dir / p.path
        for r in load_trace(path, p.format):
            if r.t < p.start_s:
                continue
            t = (r.t - p.start_s) / p.time_compression
            if t >= sc.duration_s:
                break
            copies = int(p.rate_scale) + (1 if rng.random() < p.rate_scale % 1 else 0)
            for c in range(copies):
                out.append(Arrival(at=t + c * 1e-3, prompt_tokens=min(r.prompt_tokens, sc.max_prompt_tokens),
                                   max_tokens=min(r.output_tokens, sc.max_output_tokens),
                                   stream=rng.random() < sc.stream_share))
        return out
    peak = max(sc.rate_at(x * sc.duration_s / 1000) for x in range(1001))
    if peak <= 0:
        return out
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= sc.duration_s:
            break
        if rng.random() * peak <= sc.rate_at(t):
            out.append(Arrival(at=t, prompt_tokens=sc.prompt_tokens.draw(rng),
                               max_tokens=min(sc.output_tokens.draw(rng), sc.max_output_tokens),
                               stream=rng.random() < sc.stream_share))
    return out


def load_scenario(name_or_path: str) -> tuple[Scenario, Path]:
    """A path, or the name of a shipped scenario. Returns it with the directory relative paths resolve from."""
    path = Path(name_or_path)
    if not path.exists():
        shipped = SCENARIO_DIR / f"{name_or_path}.yaml"
        if not shipped.exists():
            names = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))
            raise ConfigError(f"no scenario file {name_or_path!r} and no shipped scenario of that name "
                              f"(shipped: {names})")
        path = shipped
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(f"{path}: {_field_path(err['loc'])}: {err['msg']}" for err in e.errors())) \
            from None
    base = path.resolve().parent
    traces = [x.profile for x in sc.streams] if sc.streams else [sc.profile]
    rel = [t for t in traces if isinstance(t, Trace) and not t.path.is_absolute()]
    if rel and not all((base / t.path).exists() for t in rel):
        # shipped scenarios name traces relative to the project root (a wheel installs them under its share)
        base = shared_root()
    return sc, base

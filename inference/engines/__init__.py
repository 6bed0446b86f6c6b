"""Engines a replica can serve with. `sim` runs anywhere; real ones plug in behind the same API."""

from inference.engines.base import Engine, EngineNotReady, PromptTooLong
from inference.engines.profiles import PROFILES, SimProfile
from inference.engines.sim import SimEngine

__all__ = ["Engine", "EngineNotReady", "PromptTooLong", "PROFILES", "SimEngine", "SimProfile"]

"""The GPUs' part of fleet.yaml (`gpus:`): where the topology comes from. Composed into FleetConfig by
autoscaler/config.py."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    # A misspelt key is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuConfig(_Strict):
    source: Literal["none", "nvml", "topology", "auto"] = "auto"
    topology_file: Path | None = None
    virtual_slots: int = Field(default=8, ge=1, le=256)

    @model_validator(mode="after")
    def _file(self) -> GpuConfig:
        if self.source == "topology" and self.topology_file is None:
            raise ValueError("source 'topology' needs topology_file")
        return self

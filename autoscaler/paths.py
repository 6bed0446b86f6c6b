"""Where the project's shared files are (traces, dashboards, alert rules): the checkout's when gpufleet runs from
one, else the copies its wheel installs under <prefix>/share/gpufleet (pyproject's data-files)."""

from __future__ import annotations

import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
SHARE = Path(sys.prefix) / "share" / "gpufleet"


def shared(rel: str) -> Path:
    """`rel` (e.g. "traces/x.csv") in the checkout, else in the installed share; the checkout's path when
    neither has it, so an error names where it was looked for first."""
    if (CHECKOUT / "pyproject.toml").exists() and (CHECKOUT / rel).exists():
        return CHECKOUT / rel
    if (SHARE / rel).exists():
        return SHARE / rel
    return CHECKOUT / rel


def shared_root() -> Path:
    """The folder shipped relative paths (a scenario's `traces/...`) start from."""
    return CHECKOUT if (CHECKOUT / "pyproject.toml").exists() else SHARE

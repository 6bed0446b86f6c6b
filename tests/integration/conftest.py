from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import LocalStack, require_host_binaries


@pytest.fixture
def local_stack(tmp_path: Path) -> Iterator[Callable[..., LocalStack]]:
    require_host_binaries()
    stacks: list[LocalStack] = []

    def make(config: dict[str, Any], active: int = 1, start: bool = True,
             env: dict[str, str] | None = None) -> LocalStack:
        s = LocalStack(tmp_path / f"stack{len(stacks)}", config, env)
        stacks.append(s)
        return s.start(active) if start else s

    yield make
    problems = []
    for s in stacks:
        rc = s.stop()
        if rc != 0:
            problems.append(f"gpufleet exited {rc}:\n{s.tail_log()}")
        left = s.leftover_processes()
        if left:
            problems.append(f"processes left behind after Ctrl-C: {left}")
    assert not problems, "\n".join(problems)

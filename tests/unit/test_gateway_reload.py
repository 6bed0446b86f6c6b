"""The gateway's reload path under a slow or failing `nginx -t` (the check and signal are the injection
points every runtime provides: a local process, or `docker exec` into the gateway container)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from autoscaler.gateway.nginx import Gateway
from autoscaler.gateway.render import PoolRoute
from autoscaler.gateway.settings import GatewayConfig


def routes(*servers: str) -> list[PoolRoute]:
    return [PoolRoute("chat", "m", servers)]


def test_a_hanging_check_does_not_stall_the_next_update(tmp_path: Path):
    release = threading.Event()
    reloads: list[object] = []

    def slow_check() -> tuple[bool, str]:
        release.wait(10)
        return True, ""

    gw = Gateway(tmp_path, GatewayConfig(reload_min_interval_s=0), slow_check, lambda: None)
    gw.on_reload.append(reloads.append)

    async def go() -> float:
        first = asyncio.create_task(gw.update(routes("a:1"), tag="a"))
        await asyncio.sleep(0.1)  # the first check is now hanging in its thread
        t0 = time.monotonic()
        assert await gw.update(routes("a:1", "b:1"), tag="ab")
        took = time.monotonic() - t0
        release.set()
        await first
        await gw.update(routes("a:1", "b:1"), tag="ab")  # the next tick applies the newest routes
        return took

    took = asyncio.run(go())
    assert took < 1.0
    assert reloads == ["a", "ab"]


def test_a_check_that_cannot_run_is_retried_not_taken_as_a_rejection(tmp_path: Path):
    calls = {"n": 0}

    def flaky_check() -> tuple[bool, str]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise TimeoutError("gateway container restarting")
        return True, ""

    gw = Gateway(tmp_path, GatewayConfig(reload_min_interval_s=0), flaky_check, lambda: None)
    reloads: list[object] = []
    gw.on_reload.append(reloads.append)

    async def go() -> None:
        await gw.update(routes("a:1"), tag="a")
        assert reloads == [] and "could not run" in (gw.stats.last_error or "")
        await gw.update(routes("a:1"), tag="a")  # same routes, next tick

    asyncio.run(go())
    assert reloads == ["a"], "the same routes are applied once the check runs"


def test_a_reload_counts_only_once_nginx_serves_the_new_config(tmp_path: Path):
    """After SIGHUP old workers still answer for a moment: `routed` must wait for the new generation."""
    from autoscaler.gateway.render import files_generation, render_gateway

    # as the gateway renders: with its routing table (which names the state file in its directory)
    want = files_generation(render_gateway(routes("a:1"), routing={"state_file": str(tmp_path / "pool-state.json")}))
    answers = iter([None, "old", "old", want])
    seen: list[str | None] = []

    def probe() -> str | None:
        seen.append(next(answers, want))
        return seen[-1]

    gw = Gateway(tmp_path, GatewayConfig(reload_min_interval_s=0), lambda: (True, ""), lambda: None, probe)
    reloads: list[object] = []
    gw.on_reload.append(lambda tag: reloads.append((tag, list(seen))))
    asyncio.run(gw.update(routes("a:1"), tag="a"))
    assert reloads == [("a", [None, "old", "old", want])]


def test_an_unreachable_probe_does_not_hold_the_reload(tmp_path: Path):
    def probe() -> str | None:
        raise OSError("connection refused")

    gw = Gateway(tmp_path, GatewayConfig(reload_min_interval_s=0), lambda: (True, ""), lambda: None, probe)
    reloads: list[object] = []
    gw.on_reload.append(reloads.append)
    t0 = time.monotonic()
    asyncio.run(gw.update(routes("a:1"), tag="a"))
    assert reloads == ["a"] and time.monotonic() - t0 < 1.0


def test_the_state_dir_a_killed_run_left_is_removed_by_the_next_start_and_nothing_else_is(tmp_path: Path):
    """Root with a private run dir: the per-tick state file goes to a temp dir of its own (nginx's workers run
    as nobody). A run killed before its stop leaves that dir; the next start on the same run dir removes it."""
    import os

    import pytest

    from autoscaler.gateway.nginx import LocalNginx

    if os.geteuid() != 0:
        pytest.skip("only a root-run stack moves its state file out of the run dir")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    run = private / "run"
    killed = LocalNginx(run, GatewayConfig(), binary="/bin/true")
    left = killed.worker_state_dir()
    assert left is not None and left.is_dir() and oct(left.stat().st_mode)[-3:] == "755"
    again = LocalNginx(run, GatewayConfig(), binary="/bin/true")
    new = again.worker_state_dir()
    assert new is not None and new != left and new.is_dir() and not left.exists()
    again.remove_state_dir()
    assert not new.exists() and not (run / "nginx" / "state-dir").exists()
    # a marker that points elsewhere is not followed
    keep = tmp_path / "gpufleet-gateway-not-ours"
    keep.mkdir()
    (run / "nginx" / "state-dir").write_text(f"{keep}\n")
    third = LocalNginx(run, GatewayConfig(), binary="/bin/true")
    assert third.worker_state_dir() is not None and keep.is_dir()
    third.remove_state_dir()

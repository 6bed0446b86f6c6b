"""`gpufleet status` against a running local stack: what a person reads, the JSON a script reads, and the exit
code a monitor reads (0 healthy, 1 no fleet or a refused token, 4 answered but not healthy)."""

from __future__ import annotations

import json
import sys

from autoscaler.cli import main
from autoscaler.status import FleetStatus
from autoscaler.status_cli import problems
from tests.helpers import free_port, sim_pool, wait_for

BROKEN = {"name": "broken", "model": "m-broken", "engine": "command", "gpus_per_replica": 0,
          "command": [sys.executable, "-c", "raise SystemExit(3)", "{port}"], "min_replicas": 1, "max_replicas": 1,
          "warm_pool": {"min": 0, "max": 0}, "start_backoff_s": 60, "targets": {"concurrency": 2}}


def test_status_shows_pools_replicas_and_events_and_exits_0_when_healthy(local_stack, capsys):
    stack = local_stack({"pools": [sim_pool()]})
    wait_for(lambda: stack.replicas(role="warm", ready=True), 30, "a ready warm replica")
    token = stack.admin_token
    assert main(["status", "--admin", stack.admin, "--token", token]) == 0
    out = capsys.readouterr().out
    (active,) = stack.replicas(role="active")
    (warm,) = stack.replicas(role="warm")
    lines = out.splitlines()
    pool_line = next(line for line in lines if line.startswith("chat "))
    assert "tiny-chat" in pool_line and pool_line.split()[2:5] == ["1", "1", "1"], pool_line  # desired, active, warm
    assert any(line.startswith(active["id"]) and " active " in line for line in lines)
    assert any(line.startswith(warm["id"]) and " warm " in line for line in lines)
    assert "controller_start" in out or "ready" in out
    assert lines[-1] == "healthy"

    # --json: the admin API's own document, typed as /status is
    assert main(["status", "--json", "--admin", stack.admin, "--token", token]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["id"] for r in doc["pools"]["chat"]["replicas"]} == {active["id"], warm["id"]}
    st = FleetStatus.model_validate(doc)
    # a loop whose last tick is a minute old is stuck: the same document read a minute later is not healthy
    assert problems(st, st.time) == []
    assert "last tick" in problems(st, (st.last_tick_at or 0) + 60)[0]

    # a wrong token, or nothing listening: 1, and a line saying what to do
    assert main(["status", "--admin", stack.admin, "--token", "gfa-wrong"]) == 1
    assert "refused the admin token" in capsys.readouterr().err
    assert main(["status", "--admin", f"http://127.0.0.1:{free_port()}", "--token", token]) == 1
    assert "no live fleet" in capsys.readouterr().err


def test_status_exits_4_and_names_the_pool_when_one_is_in_crash_backoff(local_stack, capsys):
    stack = local_stack({"pools": [sim_pool(), BROKEN]})

    def backing_off() -> bool:
        return main(["status", "--admin", stack.admin, "--token", stack.admin_token]) == 4

    wait_for(backing_off, 40, "status exiting 4 for the crashing pool", interval=0.5)
    out = capsys.readouterr().out
    assert "NOT HEALTHY" in out and "pool broken: crash backoff" in out and "not placeable" not in out
    assert "chat" in out and "backoff" in next(line for line in out.splitlines() if line.startswith("broken "))

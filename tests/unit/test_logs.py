"""`--log-format json`: one JSON object a line, a controller event's fields under `event`, as a pipeline parses."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from autoscaler.cli import main
from autoscaler.logs import setup_logging
from autoscaler.loop.record import Recorder


@pytest.fixture(autouse=True)
def _text_logs_after():
    yield
    setup_logging("text")


def test_json_lines_carry_time_level_logger_message_and_the_event(capsys):
    setup_logging("json")
    rec = Recorder(lambda: 1796000000.5, log=logging.getLogger("gpufleet.controller"))
    rec.event("start", "chat", replica="r-chat-1", reason="refill the warm pool")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("gpufleet.x").exception("a tick failed")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    first, second = (json.loads(x) for x in lines)
    assert set(first) == {"time", "level", "logger", "msg", "event"}
    assert first["level"] == "info" and first["logger"] == "gpufleet.controller"
    assert first["event"] == {"t": 1796000000.5, "kind": "start", "pool": "chat", "replica": "r-chat-1",
                              "reason": "refill the warm pool"}
    assert first["time"].endswith("+00:00") and "start chat" in first["msg"]
    assert second["level"] == "error" and "ValueError: boom" in second["exc"] and "event" not in second


def test_the_cli_takes_log_format_and_refuses_an_unknown_one(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["--log-format", "xml", "validate", "x.yaml"])
    assert e.value.code == 2 and "invalid choice: 'xml'" in capsys.readouterr().err
    # the command's process logs as JSON from then on
    assert main(["--log-format", "json", "validate", str(Path(__file__).parents[2] / "examples/fleet-local.yaml")]) == 0
    capsys.readouterr()
    logging.getLogger("gpufleet.x").warning("after the command")
    doc = json.loads(capsys.readouterr().err)
    assert doc["msg"] == "after the command" and doc["level"] == "warning"

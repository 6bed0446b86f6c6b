"""schemathesis against the replica's OpenAPI document, on a real replica and through the real gateway.

The POST operations carry their real request-body schemas (from the pydantic request models), so the
generated cases include valid requests as well as every kind of broken one. The property: no case is
answered with a server error, and every error is OpenAI-shaped JSON.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from inference.app import create_app
from inference.engines import PROFILES, SimEngine
from tests.helpers import LocalStack, replica_process, require_host_binaries, sim_pool

MODEL = "tiny-chat"
FAST = ["--load-time", "0", "--step-base", "0.001", "--step-per-seq", "0", "--kv-capacity", "2048"]
EXAMPLES = 60  # per operation

CASES: dict[str, dict[str, int]] = {}  # target → status class → cases (GPUFLEET_FUZZ_REPORT=path writes it)

schema = schemathesis.openapi.from_dict(create_app(SimEngine(PROFILES["tiny"]), MODEL).openapi())


@pytest.fixture(scope="module")
def replica_url() -> Iterator[str]:
    with replica_process(*FAST, model=MODEL) as url:
        yield url


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_host_binaries()
    pool = sim_pool(warm_pool={"min": 0, "max": 0},
                    sim={"profile": "tiny", "load_time_s": 0, "step_base_s": 0.001, "step_per_seq_s": 0,
                         "kv_capacity_tokens": 2048})
    stack = LocalStack(Path(tmp_path_factory.mktemp("fuzz")), {"pools": [pool]}).start(1)
    try:
        yield stack.url
    finally:
        assert stack.stop() == 0, stack.tail_log()


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    if os.environ.get("GPUFLEET_FUZZ_REPORT"):
        Path(os.environ["GPUFLEET_FUZZ_REPORT"]).write_text(json.dumps(CASES, indent=1, sort_keys=True))
    # a fuzz run that never got past the input checks proved nothing about what serves
    for target, by in CASES.items():
        assert by.get("2xx", 0) >= 5, f"the {target} fuzz reached too few successful answers: {by}"


def _fuzz(case: Any, url: str, target: str) -> None:
    # Most generated model names are unknown (404 at the gateway): half of the cases go to the real one.
    # crc32, not hash(): the same cases on every run (hash() of a str is salted per process)
    if isinstance(case.body, dict) and "model" in case.body and zlib.crc32(repr(case.body).encode()) % 2:
        case.body["model"] = MODEL
    resp = case.call_and_validate(base_url=url, checks=[not_a_server_error], timeout=30)
    by = CASES.setdefault(target, {})
    by[f"{resp.status_code // 100}xx"] = by.get(f"{resp.status_code // 100}xx", 0) + 1
    if resp.status_code >= 400:  # every error OpenAI-shaped
        err = resp.json()["error"]
        assert err["message"] and err["type"], resp.text


# derandomize: the same generated cases every run, so a failure found once is found again
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@schema.parametrize()
@FUZZ
def test_replica_api_never_answers_a_server_error(case: Any, replica_url: str) -> None:
    _fuzz(case, replica_url, "replica")


@schema.include(method="POST").parametrize()
@FUZZ
def test_the_same_cases_through_the_gateway_never_answer_a_server_error(case: Any, gateway_url: str) -> None:
    _fuzz(case, gateway_url, "gateway")

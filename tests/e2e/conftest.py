"""The compose stack on a real Docker engine, from the offline images.

Without a usable Docker engine (and compose v2) these tests are skipped, and
the session says so loudly; CI sets GPUFLEET_REQUIRE_E2E=1 so that a missing
engine fails instead.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import ROOT, free_port, wait_for

# a project of its own per run: nothing here depends on a name an earlier (or parallel) run also used
PROJECT_PREFIX = "gpufleet-e2e"
PROJECT = f"{PROJECT_PREFIX}-{os.getpid()}"
IMAGES = ("gpufleet/app:latest", "gpufleet/nginx:latest", "gpufleet/prometheus:latest",
          "gpufleet/llamacpp:latest")
_SKIPPED: list[str] = []


def docker_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI"
    r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"no Docker engine ({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'docker info failed'})"
    r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if r.returncode != 0:
        return "no docker compose v2 plugin"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e = [i for i in items if "tests/e2e/" in str(i.fspath)]
    if not e2e:
        return
    # the one test that takes the shared stack down runs after every other e2e test, whichever file it is in,
    # and before the rest of the suite (which should not share the 2 cores with an idle stack)
    # (an optimisation, not a dependency: GPUFLEET_E2E_SHUFFLE=<seed> runs the e2e tests in a shuffled order,
    # the one that takes the stack down included, to show that no test leans on what an earlier one left)
    seed = os.environ.get("GPUFLEET_E2E_SHUFFLE")
    if seed:
        shuffled = list(e2e)
        random.Random(seed).shuffle(shuffled)
        slots = iter(shuffled)
        items[:] = [next(slots) if i in e2e else i for i in items]
    else:
        last = [i for i in items if i.name == "test_compose_down_leaves_no_container"]
        rest = [i for i in items if i not in last]
        cut = max((n for n, i in enumerate(rest) if "tests/e2e/" in str(i.fspath)), default=len(rest) - 1) + 1
        items[:] = rest[:cut] + last + rest[cut:]
    problem = docker_problem()
    if problem is None:
        return
    if os.environ.get("GPUFLEET_REQUIRE_E2E"):
        return  # the stack fixture fails, naming the problem
    msg = f"E2E SKIPPED: {problem}. The Docker end-to-end tests did not run."
    for i in e2e:
        i.add_marker(pytest.mark.skip(reason=msg))
    _SKIPPED.append(msg)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    for msg in _SKIPPED:
        bar = "!" * len(msg)
        terminalreporter.write_line(f"\n{bar}\n{msg}\n{bar}", red=True, bold=True)


class ComposeStack:
    def __init__(self, tmp: Path) -> None:
        self.gw_port, self.admin_port, self.prom_port = free_port(), free_port(), free_port()
        self.fleet = tmp / "fleet.yaml"
        self.fleet.write_text(yaml.safe_dump({
            "gpus": {"source": "auto", "virtual_slots": 6},
            "admin": {"host": "0.0.0.0", "port": 8181},
            # not the default (1m): the Docker gateway must take it from here, not from its image
            "gateway": {"client_max_body_size": "3m"},
            "pools": [{
                "name": "chat", "model": "tiny-chat", "aliases": ["tiny-alias"], "engine": "sim",
                "sim": {"profile": "tiny", "load_time_s": 3, "max_num_seqs": 4, "step_base_s": 0.05,
                        "step_per_seq_s": 0.0},
                "gpus_per_replica": 1, "min_replicas": 1, "max_replicas": 4,
                "warm_pool": {"min": 1, "max": 1}, "targets": {"concurrency": 5},
                "behavior": {"scale_down": {"stabilization_s": 10,
                                            "policies": [{"type": "replicas", "value": 4, "period_s": 5}]}},
                "drain_timeout_s": 30,
            }, {
                # a real third-party engine: llama.cpp's server and a tiny random-weight model (gpufleet/llamacpp)
                "name": "llama", "model": "tiny-llama", "engine": "llamacpp", "image": "gpufleet/llamacpp:latest",
                "model_path": "/models/tiny-llama.gguf", "args": ["--parallel", "2", "--threads", "1"],
                "gpus_per_replica": 0, "min_replicas": 1, "max_replicas": 2, "warm_pool": {"min": 1, "max": 1},
                "targets": {"concurrency": 2},
                "behavior": {"scale_down": {"stabilization_s": 10,
                                            "policies": [{"type": "replicas", "value": 2, "period_s": 5}]}},
                "drain_timeout_s": 30,
            }, {
                # at zero unless asked for: its replicas would hold 2 GPUs, the widest request the proxy admits
                "name": "tp2", "model": "tp2-chat", "engine": "sim", "gpus_per_replica": 2, "min_replicas": 0,
                "max_replicas": 1, "warm_pool": {"min": 0, "max": 0},
            }],
        }))
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT, "GPUFLEET_GATEWAY_PORT": str(self.gw_port),
                    "GPUFLEET_ADMIN_PORT": str(self.admin_port), "GPUFLEET_PROMETHEUS_PORT": str(self.prom_port),
                    "GPUFLEET_FLEET_FILE": str(self.fleet)}
        self.url = f"http://127.0.0.1:{self.gw_port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.prom = f"http://127.0.0.1:{self.prom_port}"
        self.api_key = ""
        self.admin_token = ""

    def read_secret(self, path: str) -> str:
        """A file in the autoscaler's volumes, read as a user would: `docker compose exec autoscaler cat`."""
        return self.compose("exec", "-T", "autoscaler", "cat", path).stdout.strip()

    def read_credentials(self) -> None:
        self.api_key = self.read_secret("/var/lib/gpufleet/api-keys.default-key")
        self.admin_token = self.read_secret("/var/lib/gpufleet-admin/admin-token")

    @property
    def api_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def compose(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        cmd = ["docker", "compose", "-f", "compose/compose.yaml", "-f", "compose/compose.offline.yaml",
               "-p", PROJECT, *args]
        r = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def containers(self, *labels: str, all_: bool = True) -> list[dict[str, str]]:
        wanted = (f"com.docker.compose.project={PROJECT}", *labels)
        filters = [a for lab in wanted for a in ("--filter", f"label={lab}")]
        r = subprocess.run(["docker", "ps", *(["-a"] if all_ else []), *filters, "--format", "{{json .}}"],
                           capture_output=True, text=True, check=True)
        import json

        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def replicas(self, pool: str = "chat") -> list[dict[str, str]]:
        """The replica containers of one pool (the stack runs several)."""
        return self.containers(f"io.gpufleet.owner={PROJECT}", f"io.gpufleet.pool={pool}")

    def status(self) -> dict:
        return httpx.get(f"{self.admin}/status", headers=self.admin_headers, timeout=5).raise_for_status().json()

    def active(self) -> list[dict]:
        return [r for r in self.status()["pools"]["chat"]["replicas"] if r["role"] == "active" and r["ready"]]

    def at_baseline(self) -> bool:
        """Every pool at min_replicas active and its warm minimum, all ready, nothing starting or draining."""
        try:
            pools = self.status()["pools"]
        except (httpx.HTTPError, ValueError):
            return False
        want = {"chat": {"active": 1, "warm": 1}, "llama": {"active": 1, "warm": 1}, "tp2": {}}
        for name, roles in want.items():
            reps = pools.get(name, {}).get("replicas", [])
            have: dict[str, int] = {}
            for r in reps:
                if not r["ready"]:
                    return False
                have[r["role"]] = have.get(r["role"], 0) + 1
            if have != roles:
                return False
        return True

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "80", check=False).stdout


def sweep_old_stacks() -> None:
    """Stacks earlier runs left (a run killed before its teardown): their containers, networks, volumes."""
    r = subprocess.run(["docker", "ps", "-a", "--format", '{{.Label "com.docker.compose.project"}}'],
                       capture_output=True, text=True)
    for old in sorted({p for p in r.stdout.split() if p.startswith(PROJECT_PREFIX) and p != PROJECT}):
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={old}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        for kind in ("network", "volume"):
            names = subprocess.run(["docker", kind, "ls", "-q", "--filter", f"label=com.docker.compose.project={old}"],
                                   capture_output=True, text=True).stdout.split()
            if names:
                subprocess.run(["docker", kind, "rm", *names], capture_output=True)


def ensure_images() -> None:
    missing = [i for i in IMAGES if subprocess.run(["docker", "image", "inspect", i], capture_output=True).returncode]
    if missing:
        subprocess.run(["docker/offline/build.sh"], cwd=ROOT, check=True, timeout=1800)


@pytest.fixture(scope="session")
def _shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    problem = docker_problem()
    if problem:
        pytest.fail(f"GPUFLEET_REQUIRE_E2E is set but {problem}")
    ensure_images()
    sweep_old_stacks()
    stack = ComposeStack(tmp_path_factory.mktemp("compose"))
    t0 = time.monotonic()
    stack.compose("up", "-d", "--no-build")

    def listening() -> bool:
        return httpx.get(f"{stack.url}/health", timeout=2).status_code == 200

    try:
        wait_for(listening, 180, "the gateway listening", interval=0.05)
        t_listen = time.monotonic() - t0
        stack.read_credentials()  # made before the gateway started (it waits for the autoscaler's health)
        # the very first request, sent the moment nginx listens: held by the activator, then served
        first = httpx.post(f"{stack.url}/v1/chat/completions", timeout=120, headers=stack.api_headers,
                           json={"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}],
                                 "max_tokens": 2})
        assert first.status_code == 200, f"the first request: {first.status_code} {first.text}"
    except AssertionError:
        print(stack.logs())
        raise
    print(f"\nFIGURES docker: gateway listening {t_listen:.1f}s after up -d; its first request served")
    stack.up_to_first_served_s = time.monotonic() - t0
    print(f"\nFIGURES docker: up -d to first served request {stack.up_to_first_served_s:.1f}s")
    yield stack
    stack.compose("down", "-v", check=False, timeout=180)


@pytest.fixture
def compose_stack(_shared_stack: ComposeStack) -> ComposeStack:
    """The shared stack, brought back to the state every test starts from, whatever ran before it.

    The order the collection hook sets (the test that takes the stack down last) saves a second `up`; no test
    depends on it: a stack that is down is brought up again, and the fleet is waited back to its minimum.
    """
    stack = _shared_stack
    if not stack.containers("com.docker.compose.service=autoscaler", all_=False):
        stack.compose("up", "-d", "--no-build")
        wait_for(lambda: httpx.get(f"{stack.url}/health", timeout=2).status_code == 200, 180,
                 "the gateway listening again", interval=0.2)
        stack.read_credentials()  # `down -v` took the volumes that held the old ones
    try:
        wait_for(lambda: stack.at_baseline(), 180, "the fleet back at its minimum (a replica active, one warm, "
                 "nothing starting or draining)", interval=0.5)
    except AssertionError:
        print(stack.logs())
        raise
    return stack

"""One routing rule, two runtimes: nginx runs gateway.js `pickPool` per request, the simulator runs
`autoscaler.gateway.routing.pick_pool`. Both on every case of one table (chains of up to three pools, every
set of serving and saturated pools), through njs itself (the njs CLI, the interpreter nginx embeds)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from autoscaler.gateway.render import TEMPLATES
from autoscaler.gateway.routing import pick_pool

POOLS = ("a", "b", "constructor")  # a name on Object.prototype: njs must not find it there


def _njs() -> str:
    njs = shutil.which("njs")
    if njs is None:
        msg = "MISSING njs (the njs command line): the routing parity test needs it (Debian: apt-get install njs)"
        if os.environ.get("GPUFLEET_REQUIRE_INTEGRATION"):
            pytest.fail(msg)
        pytest.skip(msg)
    return njs


def _subsets(xs: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [c for n in range(len(xs) + 1) for c in itertools.combinations(xs, n)]


def test_gateway_js_and_the_simulator_pick_the_same_pool_on_every_case(tmp_path: Path):
    njs = _njs()
    chains = [c for n in (1, 2, 3) for c in itertools.permutations(POOLS, n)]
    cases = [{"chain": list(chain), "serving": {p: p in serving for p in POOLS}, "hot": dict.fromkeys(hot, True)}
             for chain in chains for serving in _subsets(POOLS) for hot in _subsets(POOLS)]
    (tmp_path / "gateway.js").write_text((TEMPLATES / "gateway.js").read_text())
    (tmp_path / "routes.js").write_text("export default {};\n")
    (tmp_path / "cases.js").write_text(f"export default {json.dumps(cases)};\n")
    (tmp_path / "drive.js").write_text(
        "import g from 'gateway.js';\nimport cases from 'cases.js';\n"
        # one line a case: njs's console.log cuts a long line
        "cases.forEach(c => console.log(g.pickPool(c.chain, c.serving, c.hot)));\n")
    out = subprocess.run([njs, "-p", str(tmp_path), str(tmp_path / "drive.js")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    js = [int(line) for line in out.stdout.split()]
    py = [pick_pool(c["chain"], {p for p, up in c["serving"].items() if up}, c["hot"]) for c in cases]
    assert len(cases) == 960 and len(js) == len(cases)
    differ = [(c, j, p) for c, j, p in zip(cases, js, py, strict=True) if j != p]
    assert not differ, differ[:3]
    # the table is not trivial: every outcome occurs
    assert {-1, 0, 1, 2} <= set(py)

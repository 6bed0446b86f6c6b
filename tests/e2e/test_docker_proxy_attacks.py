"""The Docker API proxy tried as an attacker inside the autoscaler would: from the stack's docker-api network,
raw HTTP (paths sent as written, not normalised by a client), against the real proxy and the real engine.

Every create is a body docker-py really sends for this stack's own 2-GPU pool (admitted: the control), with
one change from tests/docker_attacks.py's tables (the guard's unit tests use them too); whatever the engine
accepts, it is inspected and counted. Per-container calls go to a container outside the project, another
project's, and the proxy itself.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import uuid

from tests.e2e.conftest import PROJECT
from tests.helpers import ROOT

ATTACK = textwrap.dedent(r"""
    import copy, http.client, json, sys
    import tests.docker_attacks as g
    from autoscaler.config import parse_config
    g.PROJECT, g.NET, g.APP = "%(project)s", "%(project)s_backend", "gpufleet/app:latest"
    g.CFG = parse_config({"pools": [{"name": "big", "model": "tp2-chat", "gpus_per_replica": 2}]})

    def send(method, path, body=None, headers=None):
        c = http.client.HTTPConnection("docker-proxy", 2375, timeout=30)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        c.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        out = r.read()
        c.close()
        return r.status, out

    created = []

    def create(body, name):
        status, out = send("POST", f"/v1.41/containers/create?name={name}", body)
        if status == 201:
            created.append(json.loads(out)["Id"])
        return status

    good, name = g.replica("big", (g.U1, g.U2))
    res = {"control": create(good, name)}
    for what, how in g.mutations():
        b = copy.deepcopy(good)
        how(b)
        res[what] = create(b, name.replace("1a2b3c4d", "e5f6a7b8"))
    text = json.dumps(good)
    for what, edit in g.TEXT_EDITS:
        res["text: " + what] = create(edit(text).encode(), name.replace("1a2b3c4d", "c0ffee00"))
    res["invalid utf-8"] = create(text.replace('"ALL"', '"AL\xff"').encode("latin-1"), name)
    res["a 2 MB body"] = create(text[:-1].encode() + b', "Cmd": ["' + b"x" * 2_000_000 + b'"]}', name)
    res["headers of 64 kB"] = send("GET", "/v1.41/containers/json", headers={"X-Pad": "x" * 65536})[0]
    res["another project's name"] = create(good, "other-r-big-1a2b3c4d--starting.active")
    # per-container routes on what is not this stack's replica
    for target in sys.argv[1:]:
        for method, path in (("GET", "/v1.41/containers/%%s/json"), ("POST", "/v1.41/containers/%%s/stop"),
                             ("POST", "/v1.41/containers/%%s/kill?signal=SIGKILL"),
                             ("POST", "/v1.41/containers/%%s/rename?name=evil"),
                             ("DELETE", "/v1.41/containers/%%s?force=1"), ("GET", "/v1.41/containers/%%s/logs"),
                             ("POST", "/v1.41/containers/%%s/exec"), ("GET", "/v1.41/containers/%%s/archive?path=/")):
            res[f"{method} {path %% target}"] = send(method, path %% target)[0]
    # paths a client library would normalise away, and an old API's start with a HostConfig
    for path in ("/v1.41/containers/../images/json", "/v1.41/containers/%%2e%%2e/images/json",
                 "/v1.41//containers/json", "/containers/json/../../images/json"):
        res["raw " + path] = send("GET", path)[0]
    res["control-start-with-hostconfig"] = send(
        "POST", f"/v1.23/containers/{created[0] if created else 'x'}/start", {"Privileged": True})[0]
    print(json.dumps({"results": res, "created": created}))
""")


def test_no_attack_on_the_docker_api_proxy_is_accepted(compose_stack):
    foreign = f"gfe2e-foreign-{uuid.uuid4().hex[:6]}"
    other = f"gfe2e-other-{uuid.uuid4().hex[:6]}"
    for name, labels in ((foreign, []), (other, ["--label", "com.docker.compose.project=other",
                                                 "--label", "io.gpufleet.owner=other"])):
        subprocess.run(["docker", "run", "-d", "--name", name, *labels, "--entrypoint", "sleep",
                        "gpufleet/app:latest", "600"], check=True, capture_output=True)
    proxy = f"{PROJECT}-docker-proxy-1"
    created: list[str] = []
    try:
        r = subprocess.run(["docker", "run", "--rm", "--network", f"{PROJECT}_docker-api", "-v", f"{ROOT}:/src:ro",
                            "-w", "/src", "-e", "PYTHONPATH=/src", "--user", "65534:65534", "gpufleet/app:latest",
                            "python", "-c", ATTACK % {"project": PROJECT}, foreign, other, proxy],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        res, created = out["results"], out["created"]
        assert res["control"] == 201, "the stack's own replica body must be admitted (else this test proves nothing)"
        accepted = {k: v for k, v in res.items() if k != "control" and 200 <= v < 300}
        stored = []
        for cid in created[1:]:  # what the engine stored for any attack it took
            hc = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True, text=True).stdout)[0]
            stored.append({k: hc["HostConfig"].get(k) for k in ("Privileged", "Binds", "PidMode", "IpcMode",
                                                                 "NetworkMode", "SecurityOpt", "CapAdd")})
        assert not accepted and not stored, f"accepted: {accepted}; Docker stored: {stored}"
        attempts = len(res) - 1
        print(f"\nFIGURES docker-proxy attacks: {attempts} tried, 0 accepted")
        assert attempts >= 80
        # the foreign and the other project's containers, and the proxy, are as they were
        for name in (foreign, other, proxy):
            st = json.loads(subprocess.run(["docker", "inspect", name], capture_output=True, text=True,
                                           check=True).stdout)[0]
            assert st["State"]["Running"] and st["Name"] == f"/{name}", name
    finally:
        subprocess.run(["docker", "rm", "-f", foreign, other, *created], capture_output=True)

"""The Docker API proxy's checks on a create body, decided on the JSON Docker reads.

The admitted bodies are the ones docker-py really sends for the runtime's own create_kwargs (captured at the
SDK's last step, `create_container_from_config`); every refused one is such a body with one thing changed the
way an attacker would change it: Go's case-insensitive field names and Unicode folding, JSON escapes,
duplicate keys, encodings, sizes, and each HostConfig field that would give a container the host.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from autoscaler.docker_guard import MAX_BODY, Refused, check_create, decode
from autoscaler.docker_stack import helper_kwargs
from tests.docker_attacks import APP, NET, POLICY, PROJECT, TEXT_EDITS, U1, U2, mutations, replica, sdk_body


def admit(body: dict[str, Any] | bytes, name: str) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return check_create(raw, name, POLICY)


def test_what_the_runtime_sends_is_admitted_and_forwarded_as_the_same_settings():
    for pool, gpus in (("chat", ()), ("big", (U1, U2))):
        body, name = replica(pool, gpus)
        out = admit(body, name)
        hc = out["HostConfig"]
        assert (out["Image"], out["Entrypoint"], out["Cmd"]) == (body["Image"], body["Entrypoint"], body["Cmd"])
        assert hc["CapDrop"] == ["ALL"] and hc["NetworkMode"] == NET and hc["Memory"] == 32 << 30
        assert out["Labels"] == body["Labels"] and out["Env"] == body["Env"]
    assert hc["DeviceRequests"] == [{"Driver": "nvidia", "Count": 0, "DeviceIDs": [U1, U2],
                                     "Capabilities": [["gpu"]], "Options": {}}]
    assert {m["Source"]: m["ReadOnly"] for m in hc["Mounts"]} == {"gf_weights": False, "gf_replica-secrets": True}
    assert "CUDA_VISIBLE_DEVICES=" + f"{U1},{U2}" in out["Env"]


def test_the_nvml_helper_is_admitted_only_as_itself():
    body, name = sdk_body(helper_kwargs(PROJECT, NET, APP))
    out = admit(body, name)
    assert out["HostConfig"]["DeviceRequests"][0]["Capabilities"] == [["utility"]]
    # the same body under a replica's name, or a replica asking for the helper's all-GPU request: refused
    r, rname = replica()
    with pytest.raises(Refused):
        admit(body, rname)
    r["HostConfig"]["DeviceRequests"] = body["HostConfig"]["DeviceRequests"]
    with pytest.raises(Refused):
        admit(r, rname)
    evil = copy.deepcopy(body)
    evil["Cmd"] = ["nvml-agent", "--port", "8185", "--evil"]
    with pytest.raises(Refused, match="nothing else"):
        admit(evil, name)


@pytest.mark.parametrize(("what", "how"), mutations(), ids=[m[0] for m in mutations()])
def test_each_widening_of_a_good_body_is_refused(what, how):
    body, name = replica("big", (U1, U2))
    how(body)
    with pytest.raises(Refused):
        admit(body, name)


def _good_text() -> tuple[str, str]:
    body, name = replica("big", (U1, U2))
    return json.dumps(body), name


@pytest.mark.parametrize(("what", "edit"), TEXT_EDITS)
def test_what_a_text_matcher_missed_is_refused(what, edit):
    text, name = _good_text()
    evil = edit(text)
    assert evil != text
    with pytest.raises(Refused):
        check_create(evil.encode(), name, POLICY)


def test_bytes_docker_would_read_otherwise_are_refused():
    text, name = _good_text()
    for raw in (b"\xef\xbb\xbf" + text.encode(),  # a byte-order mark
                text.replace('"ALL"', '"AL\xff"').encode("latin-1"),  # invalid UTF-8 (Go: U+FFFD)
                text.encode()[:-1],  # cut
                b"[]", b"null"):
        with pytest.raises(Refused):
            check_create(raw, name, POLICY)
    padded = text[:-1] + ', "Cmd": ["' + "x" * MAX_BODY + '"]}'
    with pytest.raises(Refused, match="larger"):
        check_create(padded.encode(), name, POLICY)
    with pytest.raises(Refused, match="deep"):
        decode(b"[" * 30_000 + b"]" * 30_000)  # under the size limit


def test_a_replica_is_named_as_one_of_this_project_and_nothing_else():
    body, _ = replica()
    for name in (None, "evil", "other-r-chat-1--starting.active", "gf-r-chat-1--active", "gf-nvml"):
        with pytest.raises(Refused):
            admit(body, name)  # type: ignore[arg-type]

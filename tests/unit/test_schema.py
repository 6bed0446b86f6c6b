"""fleet.yaml's JSON Schema (`gpufleet schema`, shipped as fleet.schema.json) checked the way editors use it: by a
third-party JSON Schema validator (jsonschema, Draft 2020-12), against every shipped fleet file, and refusing
what `gpufleet validate` refuses for a misspelt field, a wrong type or an unknown engine."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from autoscaler.cli import main
from autoscaler.config import ConfigError, parse_config
from autoscaler.schema import SCHEMA_FILE, schema_text

ROOT = Path(__file__).resolve().parents[2]
FLEETS = sorted(ROOT.glob("examples/*.yaml")) + [ROOT / "compose" / "fleet.yaml"]
VALIDATOR = jsonschema.Draft202012Validator(json.loads((ROOT / SCHEMA_FILE).read_text()))


def test_the_shipped_schema_is_what_gpufleet_schema_prints(capsys):
    assert (ROOT / SCHEMA_FILE).read_text() == schema_text(), "stale: run `gpufleet schema > fleet.schema.json`"
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == schema_text()
    jsonschema.Draft202012Validator.check_schema(json.loads(schema_text()))


@pytest.mark.parametrize("path", FLEETS, ids=[p.name for p in FLEETS])
def test_every_shipped_fleet_file_is_valid_and_points_editors_to_the_schema(path: Path):
    text = path.read_text()
    m = re.match(r"# yaml-language-server: \$schema=(\S+)\n", text)
    assert m and (path.parent / m.group(1)).resolve() == (ROOT / SCHEMA_FILE).resolve(), text[:120]
    errors = [e.message for e in VALIDATOR.iter_errors(yaml.safe_load(text))]
    assert not errors, errors


BASE = {"pools": [{"name": "chat", "model": "m", "min_replicas": 1, "max_replicas": 2}]}


@pytest.mark.parametrize(("what", "edit"), [
    ("a misspelt pool field", lambda c: c["pools"][0].update(min_replica=1)),
    ("an unknown top-level section", lambda c: c.update(autoscale={"on": True})),
    ("a count that is text", lambda c: c["pools"][0].update(max_replicas="two")),
    ("an engine gpufleet has no preset for", lambda c: c["pools"][0].update(engine="triton")),
    ("a pool without a model", lambda c: c["pools"][0].pop("model")),
    ("a misspelt gateway field", lambda c: c.update(gateway={"prot": 8080})),
])
def test_the_schema_refuses_what_validate_refuses(what, edit):
    assert not list(VALIDATOR.iter_errors(BASE))
    parse_config(BASE)
    bad = copy.deepcopy(BASE)
    edit(bad)
    assert list(VALIDATOR.iter_errors(bad)), f"the schema took {what}"
    with pytest.raises((ConfigError, ValueError)):
        parse_config(bad)


def test_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"gpufleet {version('gpufleet')}"


def test_the_distribution_says_its_licence_and_the_repository_has_its_text():
    from importlib.metadata import metadata

    meta = metadata("gpufleet")
    assert meta["License"] == "Apache-2.0"
    assert "License :: OSI Approved :: Apache Software License" in meta.get_all("Classifier")
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text

"""The dashboards as code: the committed JSON is what the builder makes, and it holds to the contracts
Grafana provisioning and `gpufleet dashboards --png` rely on."""

from __future__ import annotations

import json

from autoscaler.dashboards.build import ANNOTATIONS, OUT, build_all
from autoscaler.dashboards.render import Series, Window, _matrix, expand, legend
from autoscaler.loop.actions import SCALE_EVENTS


def test_the_committed_json_is_what_the_builder_makes():
    built = build_all()
    committed = {p.name: p.read_text() for p in OUT.glob("*.json")}
    assert committed == built, "run `python -m autoscaler.dashboards.build` and commit grafana/dashboards/"


def test_stable_uids_one_datasource_and_annotations_of_every_scale_event():
    dashes = [json.loads(t) for t in build_all().values()]
    assert sorted(d["uid"] for d in dashes) == ["gpufleet-cost", "gpufleet-fleet", "gpufleet-gpus", "gpufleet-pool"]
    for d in dashes:
        for p in d["panels"]:
            assert p["datasource"] == {"type": "prometheus", "uid": "gpufleet-prometheus"}, p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(set(refs)) == len(refs) and all(refs), f"{p['title']}: refIds {refs}"
            assert all(t["datasource"]["uid"] == "gpufleet-prometheus" for t in p["targets"])
        assert len({p["id"] for p in d["panels"]}) == len(d["panels"])
        kinds = [k for a in d["annotations"]["list"] for k in a["expr"].split('kind=~"')[1].split('"')[0].split("|")]
        assert sorted(kinds) == sorted(SCALE_EVENTS), d["uid"]
        assert [a["name"] for a in d["annotations"]["list"]] == list(ANNOTATIONS)
    pool = next(d for d in dashes if d["uid"] == "gpufleet-pool")
    assert [v["name"] for v in pool["templating"]["list"]] == ["pool"]
    assert all('pool=~"$pool"' in t["expr"] for p in pool["panels"] for t in p["targets"]), "every query filters"


def test_grafanas_variables_filled_as_grafana_would():
    w = Window(1000, 1600, step=2, scrape_s=5)
    assert expand('rate(x{pool=~"$pool"}[$__rate_interval]) [$__range]', w, "chat") == \
        'rate(x{pool=~"chat"}[20s]) [600s]'
    assert Window(0, 3600, step=30, scrape_s=5).rate_interval == "35s"
    assert legend("{{pool}} {{role}}", {"pool": "chat", "role": "warm"}) == "chat warm"
    assert legend("", {"b": "2", "a": "1"}) == '{a="1", b="2"}'


def test_grouping_to_matrix_as_grafanas_transformation():
    panel = {"transformations": [{"id": "groupingToMatrix", "options": {"rowField": "gpu", "columnField": "peer",
                                                                          "valueField": "link"}}]}
    rows = [("", Series({"gpu": a, "peer": b, "link": lk}, [(0, 1)]))
            for a, b, lk in (("GPU0", "GPU1", "NV12"), ("GPU1", "GPU0", "NV12"), ("GPU10", "GPU0", "SYS"),
                             ("GPU0", "GPU10", "SYS"))]
    header, body = _matrix(panel, rows)
    assert header == ["gpu \\ peer", "GPU0", "GPU1", "GPU10"]
    assert body == [["GPU0", "X", "NV12", "SYS"], ["GPU1", "NV12", "X", ""], ["GPU10", "SYS", "", "X"]]

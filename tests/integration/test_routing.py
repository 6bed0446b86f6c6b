"""Routing rules at the real nginx + njs, with the openai client: aliases, rules by key tier, header and
prompt length, fallback when a pool has no replica, and who served (the `model` field, X-Gpufleet-Route)."""

from __future__ import annotations

import httpx
import openai
import pytest
import yaml

from autoscaler.gateway.access import hash_key
from tests.helpers import sim_pool, wait_for

PREMIUM, BASIC, NARROW = "gf-premium-" + "p" * 24, "gf-basic-" + "b" * 24, "gf-narrow-" + "n" * 24
BATCH_ONLY = "gf-batchonly-" + "o" * 24


def _pool(name: str, model: str, **kw) -> dict:
    return sim_pool(name=name, model=model, warm_pool={"min": 0, "max": 0}, max_replicas=1, **kw)


FLEET = {
    "pools": [
        _pool("large", "big-chat"),
        _pool("small", "small-chat", aliases=["chat", "gpt-4o-mini"]),
        _pool("batch", "embed-batch", min_replicas=0, fallback=[{"pool": "small", "max_tokens": 3}]),
    ],
    "routing": {"rules": [
        {"name": "premium-gets-large", "match": {"models": ["chat"], "tiers": ["premium"]}, "pool": "large"},
        {"name": "long-prompts", "match": {"models": ["chat"], "prompt_tokens_over": 200}, "pool": "large"},
        {"name": "batch-header", "match": {"headers": {"X-Workload": "batch"}}, "pool": "batch"},
    ]},
}


@pytest.fixture
def routed_stack(local_stack, tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [
        {"name": "p", "sha256": hash_key(PREMIUM), "tier": "premium"},
        {"name": "b", "sha256": hash_key(BASIC), "tier": "basic"},
        {"name": "n", "sha256": hash_key(NARROW), "tier": "premium", "models": ["small-chat", "chat"]},
        {"name": "o", "sha256": hash_key(BATCH_ONLY), "models": ["embed-batch"]},
    ]}))
    cfg = dict(FLEET, gateway={"auth": {"enabled": True, "keys_file": str(keys)}})
    stack = local_stack(cfg, start=False)
    stack.start(active=0)

    def serving() -> bool:
        st = stack.status()["pools"]
        return all(any(r["role"] == "active" and r["ready"] for r in st[p]["replicas"]) for p in ("large", "small"))

    wait_for(serving, 45, "large and small serving")
    # and nginx has loaded it: a request through the gateway answers from each
    wait_for(lambda: _chat(stack, BASIC, "big-chat").status_code == 200
             and _chat(stack, BASIC, "small-chat").status_code == 200, 20, "the gateway routing to both pools")
    return stack


def _chat(stack, key: str, model: str, content: str = "hi", headers: dict | None = None,
          **extra) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}", **(headers or {})},
                      json={"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 5,
                            **extra})


def test_aliases_and_rules_choose_the_pool_and_the_answer_says_who_served(routed_stack):
    stack = routed_stack
    basic = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=BASIC, max_retries=0, timeout=30)
    premium = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=PREMIUM, max_retries=0, timeout=30)
    msgs = [{"role": "user", "content": "hi"}]

    # an alias: rewritten to the pool's own model, which the replica answers as
    raw = basic.chat.completions.with_raw_response.create(model="chat", messages=msgs, max_tokens=4)
    assert raw.parse().model == "small-chat" and raw.parse().usage.completion_tokens == 4
    assert raw.headers["x-gpufleet-route"] == "pool=small; reason=alias"
    assert raw.headers["x-gpufleet-replica"].startswith("r-small-")
    # the model's own name: no rewrite
    raw = basic.chat.completions.with_raw_response.create(model="small-chat", messages=msgs, max_tokens=2)
    assert raw.headers["x-gpufleet-route"] == "pool=small; reason=model"

    # by the key's tier
    raw = premium.chat.completions.with_raw_response.create(model="chat", messages=msgs, max_tokens=4)
    assert raw.parse().model == "big-chat"
    assert raw.headers["x-gpufleet-route"] == "pool=large; reason=rule:premium-gets-large"
    assert raw.headers["x-gpufleet-replica"].startswith("r-large-")

    # by the prompt's length (4 characters a token): 200 tokens is not over 200, 201 is
    short = basic.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "x" * 800}], max_tokens=2)
    assert short.parse().model == "small-chat"
    long = basic.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "x" * 804}], max_tokens=2)
    assert long.parse().model == "big-chat" and "rule:long-prompts" in long.headers["x-gpufleet-route"]
    # streamed, with a content array (the chat API's parts form)
    stream = basic.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": [{"type": "text", "text": "y" * 900}]}],
        max_tokens=3, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert {c.model for c in chunks} == {"big-chat"} and chunks[-1].usage.completion_tokens == 3

    # by a header; the batch pool has no replica, so its fallback serves, capped at 3 tokens
    raw = basic.chat.completions.with_raw_response.create(
        model="small-chat", messages=msgs, max_tokens=50, extra_headers={"X-Workload": "batch"})
    r = raw.parse()
    assert r.model == "small-chat" and r.usage.completion_tokens == 3
    assert raw.headers["x-gpufleet-route"] == (
        "pool=small; reason=fallback:no-replica:batch rule:batch-header max_tokens<=3")

    # unknown models and other paths are unchanged
    assert _chat(stack, BASIC, "nope").status_code == 404
    assert sorted(m.id for m in basic.models.list().data) == [
        "big-chat", "chat", "embed-batch", "gpt-4o-mini", "small-chat"]


def test_the_completions_api_is_routed_and_capped_too(routed_stack):
    stack = routed_stack
    c = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=BASIC, max_retries=0, timeout=30)
    r = c.completions.create(model="gpt-4o-mini", prompt="hello", max_tokens=4)
    assert r.model == "small-chat" and r.usage.completion_tokens == 4
    raw = c.completions.with_raw_response.create(model="embed-batch", prompt="hello", max_tokens=40)
    assert raw.parse().usage.completion_tokens == 3 and raw.parse().model == "small-chat"
    # a cap never raises a smaller limit
    raw = c.completions.with_raw_response.create(model="embed-batch", prompt="hello", max_tokens=2)
    assert raw.parse().usage.completion_tokens == 2


def test_a_rule_never_gives_a_key_a_model_it_may_not_use(routed_stack):
    """NARROW may use small-chat (and its alias): neither its premium tier nor a header it sets reaches
    another pool's model, and asking for one by name is the usual 404."""
    stack = routed_stack
    c = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=NARROW, max_retries=0, timeout=30)
    msgs = [{"role": "user", "content": "hi"}]
    raw = c.chat.completions.with_raw_response.create(model="chat", messages=msgs, max_tokens=2)
    assert raw.parse().model == "small-chat" and raw.headers["x-gpufleet-route"] == "pool=small; reason=alias"
    raw = c.chat.completions.with_raw_response.create(model="small-chat", messages=msgs, max_tokens=2,
                                                       extra_headers={"X-Workload": "batch"})
    assert raw.parse().model == "small-chat" and raw.headers["x-gpufleet-route"] == "pool=small; reason=model"
    assert _chat(stack, NARROW, "big-chat").status_code == 404


def test_a_fallback_never_gives_a_key_a_model_it_may_not_use(routed_stack):
    """The batch pool is at zero and falls back to small: a key that may use small-chat overflows there; a key
    that may use embed-batch alone is held for the batch pool's own replica instead, never served by small."""
    stack = routed_stack
    only = _chat(stack, BATCH_ONLY, "embed-batch")
    assert only.status_code == 200, only.text
    assert only.json()["model"] == "embed-batch" and "fallback" not in only.headers.get("x-gpufleet-route", ""), \
        (only.json()["model"], only.headers.get("x-gpufleet-route"))

"""A saturated pool overflows to its fallback (answers capped), and stops once it has caught up; a frozen
autoscaler never leaves the gateway overflowing. Real nginx + njs, real replicas, the openai client."""

from __future__ import annotations

import os
import signal
import time

from tests.helpers import Clients, sim_pool, wait_for

LARGE = sim_pool(name="large", model="big-chat", min_replicas=1, max_replicas=2, warm_pool={"min": 0, "max": 0},
                 sim={"profile": "tiny", "load_time_s": 4.0, "max_num_seqs": 2, "step_base_s": 0.05,
                      "step_per_seq_s": 0.0},
                 targets={"concurrency": 2},
                 saturation={"waiting_per_replica": 2, "hold_s": 2},
                 fallback=[{"pool": "small", "max_tokens": 4}])
SMALL = sim_pool(name="small", model="small-chat", min_replicas=1, max_replicas=1, warm_pool={"min": 0, "max": 0},
                 sim={"profile": "tiny", "load_time_s": 1.0, "max_num_seqs": 16, "step_base_s": 0.05,
                      "step_per_seq_s": 0.0})


def test_saturation_overflows_capped_then_stops_when_the_pool_caught_up(local_stack):
    stack = local_stack({"pools": [LARGE, SMALL]}, start=False).start(active=0)
    wait_for(lambda: all(stack.replicas(p, role="active", ready=True) for p in ("large", "small"))
             and stack.gateway_serves(), 45, "both pools serving")
    with Clients(stack.url, 5, "big-chat") as load:
        # one large replica runs 2 at a time: 3 wait, over 2 per replica → overflow to small, capped at 4 tokens
        wait_for(lambda: any(a.model == "small-chat" for a in load.answers), 20, "an answer from the fallback")
        over = [a for a in load.answers if a.model == "small-chat"]
        assert all(a.tokens <= 4 and a.route.startswith("pool=small; reason=fallback:saturated:large")
                   for a in over), over[:3]
        assert "overflow" in {e["kind"] for e in stack.events()}
        # the large pool scales up meanwhile (its queue was seen before the overflow took it away)
        wait_for(lambda: len(stack.replicas("large", role="active", ready=True)) == 2, 30, "a 2nd large replica")
        wait_for(lambda: not stack.pool("large")["saturated"], 20, "saturation over")
        caught_up = time.monotonic() + 3  # the reload and the last overflowed answers
        wait_for(lambda: len(load.since(caught_up)) >= 10, 40, "ten answers sent after the saturation ended")
    after = load.since(caught_up)  # every request sent since, answered
    assert len(after) >= 10, "the clients kept sending"
    assert {a.model for a in after} == {"big-chat"}, [a.route for a in after if a.model != "big-chat"][:5]
    errors = [a.error for a in load.answers if a.error]
    assert not errors, errors[:5]
    ends = [e for e in stack.events() if e["kind"] == "overflow_end" and e["pool"] == "large"]
    assert ends, "the end of the overflow is an event"


def test_a_frozen_autoscaler_does_not_keep_the_gateway_overflowing(local_stack):
    stack = local_stack({"pools": [dict(LARGE, max_replicas=1), SMALL]}, start=False).start(active=0)
    wait_for(lambda: all(stack.replicas(p, role="active", ready=True) for p in ("large", "small"))
             and stack.gateway_serves(), 45, "both pools serving")
    assert stack.proc is not None
    with Clients(stack.url, 5, "big-chat") as load:
        wait_for(lambda: stack.pool("large")["saturated"], 20, "large saturated")
        os.kill(stack.proc.pid, signal.SIGSTOP)  # the autoscaler hangs: its state file ages
        try:
            time.sleep(11)  # past the gateway's 10 s staleness bound
            t = time.monotonic()
            time.sleep(4)
        finally:
            os.kill(stack.proc.pid, signal.SIGCONT)
    # requests sent while the file was stale (routed then; answered whenever the queue let them)
    during = [a for a in load.answers if t <= a.at <= t + 4]
    assert during and {a.model for a in during} == {"big-chat"}, [a.route for a in during][:5]
    assert not [a.error for a in load.answers if a.error]

"""The chaos tests' verdict: a failed request is excused only by evidence of the fault that caused it."""

from __future__ import annotations

from tests.chaos.evidence import Addresses, Failure, Serving, access_log, first_after, judge

FAULTS = [{"kind": "kill_replica", "t": 100.0, "replica": "r-a"}, {"kind": "restart_autoscaler", "t": 200.0},
          {"kind": "stop_replica", "t": 400.0, "replica": "r-s"},
          {"kind": "poison_metrics", "t": 500.0, "replica": "r-p"}]
AT = Addresses()
AT.saw("127.0.0.1:4001", "r-a", 50.0)
AT.saw("127.0.0.1:4002", "r-b", 50.0)
AT.saw("127.0.0.1:4001", "r-new", 101.0)  # the killed replica's address, handed to the next one
LOG = access_log([
    'x "POST /v1/chat/completions HTTP/1.1" 502 9 rt=1 up=127.0.0.1:4001 ut=1 key= rid=by-log',
    'x "POST /v1/chat/completions HTTP/1.1" 502 9 rt=1 up=127.0.0.1:4002 ut=1 key= rid=healthy',
])


def verdict(*failures: Failure, cap: int = 10, unrouted: dict | None = None):
    return judge(list(failures), FAULTS, AT, unrouted or {"r-a": 101.5, "r-s": 403.0}, [(300.0, 301.0)], LOG,
                 cap=cap, stopped_at={"r-p": 504.0})


def test_a_failure_on_the_replica_that_was_killed_while_it_was_in_flight_is_excused():
    v = verdict(Failure("h", 99.0, 100.5, "502", replica="r-a"), Failure("by-log", 99.5, 100.2, "timeout"))
    assert not v.unexplained and sum(len(x) for x in v.excused.values()) == 2


def test_sent_after_a_kill_is_not_excused_nginx_retries_a_refused_connect_elsewhere():
    # the gateway's retry removed would fail exactly these: the suite must see them
    v = verdict(Failure("after-kill", 100.5, 100.6, "502", replica="r-a"),
                Failure("late", 104.0, 105.0, "502", replica="r-a"), Failure("early", 90.0, 95.0, "502", replica="r-a"))
    assert len(v.unexplained) == 3


def test_a_stopped_replica_excuses_what_was_sent_to_it_until_nginx_dropped_it_a_poisoned_one_only_its_stop():
    v = verdict(Failure("to-frozen", 402.0, 432.0, "timeout", replica="r-s"),
                Failure("after-drop", 405.0, 435.0, "timeout", replica="r-s"),
                Failure("poisoned-in-flight", 503.5, 504.2, "cut", replica="r-p"),
                Failure("poisoned-before", 501.0, 501.5, "502", replica="r-p"))
    assert sorted(x for xs in v.excused.values() for x in xs) == ["poisoned-in-flight", "to-frozen"]
    assert len(v.unexplained) == 2


def test_a_failure_on_a_healthy_replica_or_with_no_evidence_is_unexplained_whatever_its_time():
    v = verdict(Failure("healthy", 99.5, 100.5, "502"), Failure("nothing", 99.5, 100.5, "reset"),
                Failure("during-autoscaler-restart", 199.0, 201.0, "502", replica="r-b"))
    assert len(v.unexplained) == 3 and not v.excused


def test_a_refused_connection_is_excused_only_while_nginx_restarted():
    v = verdict(Failure("in", 300.2, 300.3, "refused", refused=True),
                Failure("out", 250.0, 250.1, "refused", refused=True))
    assert list(v.excused.values()) == [["in"]] and len(v.unexplained) == 1


def test_one_fault_excuses_at_most_cap_requests():
    v = verdict(*(Failure(f"f{i}", 99.0, 100.5, "502", replica="r-a") for i in range(5)), cap=3)
    assert v.over_cap == {"kill_replica r-a at 100.0": 5}


def test_an_address_names_the_replica_that_held_it_when_the_request_was_sent():
    assert (AT.at("127.0.0.1:4001", 99.0), AT.at("127.0.0.1:4001", 102.0), AT.at("127.0.0.1:4001", 10.0)) == \
        ("r-a", "r-new", "r-a")
    # a request to the killed replica's old address, sent before it was reused, is the kill's
    v = verdict(Failure("by-log", 99.8, 100.1, "502"))
    assert not v.unexplained


def test_after_a_kill_only_the_pools_only_replica_excuses_what_nginx_could_not_retry():
    alone, two = Serving(), Serving()
    alone.saw(95.0, ["r-a"])
    two.saw(95.0, ["r-a", "r-b"])
    late = Failure("after-kill", 100.5, 100.6, "502", replica="r-a")
    for serving, excused in ((alone, True), (two, False)):
        v = judge([late], FAULTS, AT, {"r-a": 101.5}, [], LOG, cap=10, serving=serving)
        assert (not v.unexplained) is excused, (serving.at(100.5), v)


def test_a_replica_s_leaving_counts_from_its_fault_not_from_an_earlier_drain():
    """A warm replica drained and activated again before the fault (an earlier test on a shared stack) left
    nginx's config long before it: its first `unrouted` is not the one that ends the fault's excuse."""
    events = [{"t": 10.0, "kind": "unrouted", "replica": "r1"}, {"t": 60.0, "kind": "unrouted", "replica": "r1"},
              {"t": 61.0, "kind": "stop", "replica": "r1"}, {"t": 5.0, "kind": "unrouted", "replica": "r2"}]
    faults = [{"kind": "stop_replica", "t": 50.0, "replica": "r1"}, {"kind": "restart_gateway", "t": 70.0}]
    assert first_after(events, "unrouted", faults) == {"r1": 60.0}
    assert first_after(events, "stop", faults) == {"r1": 61.0}
    sent_after_fault = Failure("x", 52.0, 62.0, "cut", replica="r1")
    v = judge([sent_after_fault], faults, Addresses(), first_after(events, "unrouted", faults), [], {}, cap=5)
    assert not v.unexplained and v.excused
    v_old = judge([sent_after_fault], faults, Addresses(), {"r1": 10.0}, [], {}, cap=5)
    assert v_old.unexplained, "with the earlier drain's time the same failure was unexplained"

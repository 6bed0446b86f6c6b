"""Fault injection on the real local stack, under steady traffic from the openai client.

On a seeded schedule: replicas are SIGKILLed and SIGSTOPped, a replica serves poisoned metrics (NaN,
+Inf, a bucket without `le`, garbage, a body dripped one byte every 0.3 s), the autoscaler is SIGKILLed
and started again, nginx is stopped. Checked all along: no request fails except those in flight on a
replica that was killed (or stopped, or poisoned and evicted) and those refused while nginx was down,
each counted; no GPU is held by two live replicas; the tick never stalls more than 3 s while the
autoscaler runs; nothing is left behind after shutdown (the fixture checks that).

GPUFLEET_CHAOS_SEED picks another schedule; GPUFLEET_CHAOS_REPORT=path writes the run's figures as JSON.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.chaos import evidence
from tests.helpers import LocalStack, pid_alive, wait_for

SEED = int(os.environ.get("GPUFLEET_CHAOS_SEED", "20261123"))
FAULT_EVERY_S = 5.0
KINDS = ("kill_replica", "stop_replica", "poison_metrics", "restart_autoscaler", "restart_gateway")
POISONS = ("drip", "nan", "nole", "inf", "garbage")  # in this order: the slow one first
CAP_PER_FAULT = 40  # requests one fault may excuse (a replica in flight: ~4; nginx restarted: up to ~35)
MAX_STALL_S = 3.0


def chaos_pool(**over: Any) -> dict[str, Any]:
    pool: dict[str, Any] = {
        "name": "chat", "model": "tiny-chat", "engine": "command",
        "command": [sys.executable, "-m", "tests.chaos.poison_replica", "--host", "{host}", "--port", "{port}",
                    "--model", "{model}", "--replica-id", "{replica_id}", "--load-time", "1",
                    "--max-num-seqs", "4", "--step-base", "0.05", "--step-per-seq", "0"],
        "gpus_per_replica": 1, "min_replicas": 2, "max_replicas": 4,
        "warm_pool": {"min": 1, "max": 1}, "targets": {"concurrency": 5},
        "behavior": {"scale_down": {"stabilization_s": 10,
                                    "policies": [{"type": "replicas", "value": 4, "period_s": 5}]}},
        "drain_timeout_s": 20, "start_backoff_s": 1, "start_backoff_max_s": 4,
    }
    pool.update(over)
    return pool


def chaos_config(**pool: Any) -> dict[str, Any]:
    return {"unhealthy_after": 2, "scrape_timeout_s": 0.5, "gpus": {"source": "none", "virtual_slots": 6},
            "pools": [chaos_pool(**pool)]}


@dataclass
class Result:
    rid: str  # the request's X-Request-Id, which nginx writes in its access log
    t0: float
    t1: float
    ok: bool
    error: str = ""
    connect: bool = False  # never reached nginx
    replica: str | None = None  # X-Gpufleet-Replica of the response, where one came


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    gpu_conflicts: list[str] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)
    down: list[tuple[float, float]] = field(default_factory=list)  # autoscaler not running
    gateway_down: list[tuple[float, float]] = field(default_factory=list)
    replica_at: evidence.Addresses = field(default_factory=evidence.Addresses)  # which replica held an address
    serving: evidence.Serving = field(default_factory=evidence.Serving)  # which replicas served, over time
    events: dict[tuple, dict[str, Any]] = field(default_factory=dict)  # /status events, as seen
    monitor_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def traffic(stack: LocalStack, run: Run, stop: threading.Event, worker: int) -> None:
    c = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0, timeout=30)
    i = 0
    while not stop.is_set():
        i += 1
        rid = f"w{worker}-{i}"
        t0 = time.time()
        replica = None
        try:
            msgs = [{"role": "user", "content": f"w{worker} {i}"}]
            if (i + worker) % 2:
                raw = c.chat.completions.with_raw_response.create(
                    model="tiny-chat", messages=msgs, max_tokens=8, stream=True,
                    stream_options={"include_usage": True}, extra_headers={"X-Request-Id": rid})
                replica = raw.headers.get("x-gpufleet-replica")
                chunks = list(raw.parse())
                if not chunks or chunks[-1].usage is None or chunks[-1].usage.completion_tokens != 8:
                    raise RuntimeError("stream truncated")
            else:
                raw = c.chat.completions.with_raw_response.create(
                    model="tiny-chat", max_tokens=8, messages=msgs, extra_headers={"X-Request-Id": rid})
                replica = raw.headers.get("x-gpufleet-replica")
                r = raw.parse()
                assert r.usage is not None and r.usage.completion_tokens == 8
            res = Result(rid, t0, time.time(), True, replica=replica)
        except openai.APIConnectionError as e:
            refused = "Connection refused" in str(e.__cause__) or isinstance(e.__cause__, httpx.ConnectError)
            res = Result(rid, t0, time.time(), False, f"{type(e).__name__}: {e.__cause__ or e}", connect=refused,
                         replica=replica)
            if refused:
                time.sleep(0.2)  # as a client would before trying again, not a busy loop of refusals
        except openai.APIStatusError as e:
            res = Result(rid, t0, time.time(), False, f"{type(e).__name__}: {e}",
                         replica=e.response.headers.get("x-gpufleet-replica") or replica)
        except Exception as e:
            res = Result(rid, t0, time.time(), False, f"{type(e).__name__}: {e}", replica=replica)
        with run.lock:
            run.results.append(res)


def live_gpu_holders(stack: LocalStack) -> dict[str, list[str]]:
    """GPU → replicas whose process is alive, from the runtime's own state files (the truth)."""
    out: dict[str, list[str]] = {}
    for f in (stack.run_dir / "replicas").glob("r-*.json"):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d.get("pid"), int) and pid_alive(d["pid"]):
            for g in d.get("gpus", []):
                out.setdefault(g, []).append(d["id"])
    return out


def monitor(stack: LocalStack, run: Run, stop: threading.Event, restarting: threading.Event) -> None:
    """GPU holders, the tick's liveness, and what the verdict needs (replica addresses, events), every 0.25 s.
    A /status that does not answer is a stall as long as the time since the last tick it did report; an error
    in here is recorded and fails the test (a monitor that died would otherwise see nothing)."""
    last_tick: float | None = None
    while not stop.is_set():
        try:
            for g, holders in live_gpu_holders(stack).items():
                if len(holders) > 1:
                    run.gpu_conflicts.append(f"{time.time():.1f}: {g} held by {holders}")
            if restarting.is_set() or stack.proc is None or stack.proc.poll() is not None:
                last_tick = None  # a new autoscaler: its own first tick starts the clock again
            else:
                try:
                    r = stack.admin_get("/status", timeout=2)
                    r.raise_for_status()
                    st = r.json()
                    reps = st["pools"]["chat"]["replicas"]
                    for rep in reps:
                        run.replica_at.saw(rep["upstream"], rep["id"], rep["created_at"])
                    run.serving.saw(st["time"], [r["id"] for r in reps if r["role"] == "active" and r["ready"]])
                    for e in st["events"]:
                        run.events[(e["t"], e["kind"], e.get("replica"))] = e
                    if st.get("last_tick_at"):
                        last_tick = st["last_tick_at"]
                    if last_tick is not None and not restarting.is_set():
                        run.stalls.append(time.time() - last_tick)
                except (httpx.HTTPError, ValueError, KeyError):
                    if last_tick is not None and not restarting.is_set():
                        run.stalls.append(time.time() - last_tick)  # no answer: stalled for all of it
        except Exception as e:  # noqa: BLE001 (recorded: the test fails on it)
            run.monitor_errors.append(f"{type(e).__name__}: {e}")
        time.sleep(0.25)


def active_replicas(stack: LocalStack) -> list[dict[str, Any]]:
    try:
        return stack.replicas("chat", role="active", ready=True)
    except httpx.HTTPError:
        return []


def inject(kind: str, stack: LocalStack, run: Run, rng: random.Random, restarting: threading.Event,
           chaos_dir: Path, n: int) -> dict[str, Any]:
    t = time.time()
    fault: dict[str, Any] = {"kind": kind, "t": t}
    if kind in ("kill_replica", "stop_replica", "poison_metrics"):
        reps = active_replicas(stack)
        if not reps:
            return {**fault, "skipped": "no active replica"}
        r = rng.choice(reps)
        fault["replica"] = r["id"]
        if kind == "poison_metrics":
            fault["poison"] = POISONS[sum(1 for f in run.faults if "poison" in f) % len(POISONS)]
            (chaos_dir / r["id"]).write_text(fault["poison"])
        else:
            os.kill(stack.replica_pid(r["id"]), signal.SIGKILL if kind == "kill_replica" else signal.SIGSTOP)
    elif kind == "restart_autoscaler":
        restarting.set()
        assert stack.proc is not None
        stack.proc.kill()
        stack.proc.wait(10)
        time.sleep(0.5)
        stack.start(active=1, timeout=60)
        run.down.append((t, time.time()))
        restarting.clear()
    elif kind == "restart_gateway":
        pid = int((stack.run_dir / "nginx.pid").read_text())
        os.kill(pid, signal.SIGQUIT)
        wait_for(lambda: not pid_alive(pid), 15, "the old nginx to exit")
        wait_for(stack.gateway_serves, 15, "nginx started again by the stack")
        run.gateway_down.append((t, time.time()))
    return fault


def verdict(run: Run, log_lines: list[str]) -> evidence.Verdict:
    """Each failed request against the evidence: which replica served it (its response, or nginx's access log
    line by its request id) and the fault injected on exactly that replica; or a refused connection while
    nginx itself restarted. At most CAP_PER_FAULT requests excused by one fault."""
    faults = [f for f in run.faults if "skipped" not in f]
    unrouted = evidence.first_after(run.events.values(), "unrouted", faults)
    stopped = evidence.first_after(run.events.values(), "stop", faults)
    failures = [evidence.Failure(r.rid, r.t0, r.t1, r.error, refused=r.connect, replica=r.replica)
                for r in run.results if not r.ok]
    return evidence.judge(failures, faults, run.replica_at, unrouted,
                          run.gateway_down, evidence.access_log(log_lines), cap=CAP_PER_FAULT, stopped_at=stopped,
                          serving=run.serving)


def test_steady_traffic_through_a_seeded_schedule_of_faults(local_stack, tmp_path):
    chaos_dir = tmp_path / "chaos"
    chaos_dir.mkdir()
    stack = local_stack(chaos_config(), active=2, env={"GPUFLEET_CHAOS_DIR": str(chaos_dir)})
    rng = random.Random(SEED)
    schedule = list(KINDS) * 2
    rng.shuffle(schedule)
    run, stop, restarting = Run(), threading.Event(), threading.Event()
    threads = [threading.Thread(target=traffic, args=(stack, run, stop, w), daemon=True) for w in range(4)]
    threads.append(threading.Thread(target=monitor, args=(stack, run, stop, restarting), daemon=True))
    for th in threads:
        th.start()
    started = time.time()
    try:
        for n, kind in enumerate(schedule):
            time.sleep(FAULT_EVERY_S)
            run.faults.append(inject(kind, stack, run, rng, restarting, chaos_dir, n))
        # the fleet heals: back to its minimum, serving
        wait_for(lambda: len(active_replicas(stack)) >= 2 or None, 60, "the pool back at min_replicas")
        time.sleep(3)
    finally:
        stop.set()
        for th in threads:
            th.join(40)
    duration = time.time() - started

    failed = [r for r in run.results if not r.ok]
    v = verdict(run, (stack.run_dir / "nginx-access.log").read_text().splitlines())
    by_kind: dict[str, int] = {}
    for f in run.faults:
        if "skipped" not in f:
            by_kind[f["kind"]] = by_kind.get(f["kind"], 0) + 1
    report = {
        "seed": SEED, "duration_s": round(duration, 1), "faults": by_kind,
        "poisons": [f["poison"] for f in run.faults if "poison" in f],
        "requests": len(run.results), "failed": len(failed),
        "failed_on_a_faulted_replica": sum(len(x) for k, x in v.excused.items() if not k.startswith("restart_")),
        "failed_refused_while_nginx_restarted": sum(len(x) for k, x in v.excused.items()
                                                    if k.startswith("restart_gateway")),
        "excused_by_fault": {k: len(x) for k, x in v.excused.items()},
        "unexplained": len(v.unexplained), "gpu_conflicts": len(run.gpu_conflicts),
        "max_tick_stall_s": round(max(run.stalls, default=0.0), 3), "status_polls": len(run.stalls),
        "autoscaler_restart_s": [round(b - a, 2) for a, b in run.down],
        "gateway_restart_s": [round(b - a, 2) for a, b in run.gateway_down],
    }
    errors: dict[str, int] = {}
    for r in failed:
        errors[r.error[:120]] = errors.get(r.error[:120], 0) + 1
    report["errors"] = dict(sorted(errors.items(), key=lambda kv: -kv[1])[:8])
    report["failures_by_second"] = sorted({round(r.t1 - started) for r in failed})
    print(json.dumps(report, indent=1))
    if os.environ.get("GPUFLEET_CHAOS_REPORT"):
        Path(os.environ["GPUFLEET_CHAOS_REPORT"]).write_text(json.dumps(report, indent=1))

    assert set(by_kind) == set(KINDS), f"every kind of fault was injected: {by_kind}"
    assert len(run.results) > 100, "steady traffic ran all along"
    assert not run.monitor_errors, run.monitor_errors[:5]
    assert all(not th.is_alive() for th in threads), "a traffic or monitor thread outlived the run"
    assert not v.unexplained, f"{len(v.unexplained)} failed with no fault to explain them: {v.unexplained[:10]}"
    assert not v.over_cap, f"faults that would excuse more than {CAP_PER_FAULT} requests each: {v.over_cap}"
    assert not run.gpu_conflicts, run.gpu_conflicts[:5]
    assert run.stalls and max(run.stalls) <= MAX_STALL_S, f"the tick stalled {max(run.stalls):.1f}s"
    # poisoned replicas were found out and retired
    poisoned = {f["replica"] for f in run.faults if f["kind"] == "poison_metrics" and "replica" in f}
    wait_for(lambda: not poisoned & {r["id"] for r in stack.replicas("chat")} or None, 20,
             "every poisoned replica retired")


def test_autoscaler_restarted_inside_a_stop_grace_finishes_the_stop_and_reuses_the_gpu_only_then(
        local_stack, tmp_path):
    """One GPU slot. The replica is SIGSTOPped, so its removal waits out the stop grace (SIGTERM is not
    delivered to a stopped process); the autoscaler is SIGKILLed inside that grace and started again."""
    stack = local_stack(chaos_config(min_replicas=1, max_replicas=1, warm_pool={"min": 0, "max": 0})
                        | {"gpus": {"source": "none", "virtual_slots": 1}}, active=1)
    (old,) = stack.replicas("chat", role="active")
    pid = stack.replica_pid(old["id"])
    os.kill(pid, signal.SIGSTOP)
    state = stack.run_dir / "replicas" / f"{old['id']}.json"
    wait_for(lambda: json.loads(state.read_text()).get("stopping") or None, 20, "the removal to begin")
    assert stack.proc is not None
    stack.proc.kill()  # inside the grace: the old replica still runs, and holds vslot0
    stack.proc.wait(10)
    assert pid_alive(pid)
    conflicts: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            conflicts.extend(f"{g}: {h}" for g, h in live_gpu_holders(stack).items() if len(h) > 1)
            time.sleep(0.05)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        stack.start(active=1, timeout=60)
    finally:
        stop.set()
        th.join(5)
    assert not pid_alive(pid), "the restarted autoscaler finished the removal"
    (new,) = stack.replicas("chat", role="active")
    assert new["id"] != old["id"] and new["gpus"] == ["vslot0"]
    assert [e["replica"] for e in stack.events("stop_resumed")] == [old["id"]]
    assert not conflicts, f"vslot0 had two live holders: {conflicts[:3]}"


def test_a_killed_replica_the_autoscaler_has_not_seen_yet_costs_no_request(local_stack):
    """The gateway's own retry, by cause: the autoscaler is frozen (it cannot remove the replica from nginx),
    one of two serving replicas is SIGKILLed, and requests keep coming. nginx's connect to the dead one is
    refused, and it retries on the other (no byte was sent, so nothing can be duplicated): none fails."""
    stack = local_stack(chaos_config(min_replicas=2, max_replicas=2, warm_pool={"min": 0, "max": 0}), active=2)
    wait_for(lambda: len(active_replicas(stack)) == 2 and stack.gateway_serves(), 30, "two replicas routed")
    victim = active_replicas(stack)[0]["id"]
    assert stack.proc is not None
    os.kill(stack.proc.pid, signal.SIGSTOP)
    try:
        os.kill(stack.replica_pid(victim), signal.SIGKILL)
        c = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0, timeout=30)
        answers = []
        for i in range(20):
            raw = c.chat.completions.with_raw_response.create(
                model="tiny-chat", max_tokens=4, messages=[{"role": "user", "content": f"r{i}"}])
            answers.append((raw.http_response.status_code, raw.headers.get("x-gpufleet-replica")))
    finally:
        os.kill(stack.proc.pid, signal.SIGCONT)
    assert all(status == 200 for status, _ in answers), answers
    assert victim not in {rep for _, rep in answers}, answers

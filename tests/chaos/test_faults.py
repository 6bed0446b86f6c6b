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

from tests.helpers import LocalStack, pid_alive, wait_for

SEED = int(os.environ.get("GPUFLEET_CHAOS_SEED", "20261123"))
FAULT_EVERY_S = 5.0
KINDS = ("kill_replica", "stop_replica", "poison_metrics", "restart_autoscaler", "restart_gateway")
POISONS = ("drip", "nan", "nole", "inf", "garbage")  # in this order: the slow one first
REPLICA_FAULT_WINDOW_S = 15.0  # from the fault until the replica is surely gone (evict + stop grace)
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
    t0: float
    t1: float
    ok: bool
    error: str = ""
    connect: bool = False  # never reached nginx


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    gpu_conflicts: list[str] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)
    down: list[tuple[float, float]] = field(default_factory=list)  # autoscaler not running
    gateway_down: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def traffic(stack: LocalStack, run: Run, stop: threading.Event, worker: int) -> None:
    c = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0, timeout=30)
    i = 0
    while not stop.is_set():
        i += 1
        t0 = time.time()
        try:
            if (i + worker) % 2:
                chunks = list(c.chat.completions.create(
                    model="tiny-chat", messages=[{"role": "user", "content": f"w{worker} {i}"}], max_tokens=8,
                    stream=True, stream_options={"include_usage": True}))
                if not chunks or chunks[-1].usage is None or chunks[-1].usage.completion_tokens != 8:
                    raise RuntimeError("stream truncated")
            else:
                r = c.chat.completions.create(model="tiny-chat", max_tokens=8,
                                              messages=[{"role": "user", "content": f"w{worker} {i}"}])
                assert r.usage is not None and r.usage.completion_tokens == 8
            res = Result(t0, time.time(), True)
        except openai.APIConnectionError as e:
            refused = "Connection refused" in str(e.__cause__) or isinstance(e.__cause__, httpx.ConnectError)
            res = Result(t0, time.time(), False, f"{type(e).__name__}: {e.__cause__ or e}", connect=refused)
            if refused:
                time.sleep(0.2)  # as a client would before trying again, not a busy loop of refusals
        except Exception as e:
            res = Result(t0, time.time(), False, f"{type(e).__name__}: {e}")
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
    while not stop.is_set():
        for g, holders in live_gpu_holders(stack).items():
            if len(holders) > 1:
                run.gpu_conflicts.append(f"{time.time():.1f}: {g} held by {holders}")
        if not restarting.is_set() and stack.proc is not None and stack.proc.poll() is None:
            try:
                st = stack.admin_get("/status", timeout=2).json()
                if st.get("last_tick_at") and not restarting.is_set():
                    run.stalls.append(time.time() - st["last_tick_at"])
            except httpx.HTTPError:
                if not restarting.is_set():
                    run.stalls.append(2.0)  # no answer in 2 s: a stall of at least that
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


def explained(r: Result, run: Run) -> str | None:
    """Why a failed request was allowed to fail, or None."""
    for f in run.faults:
        on_replica = f["kind"] in ("kill_replica", "stop_replica", "poison_metrics") and "replica" in f
        if on_replica and r.t0 <= f["t"] + REPLICA_FAULT_WINDOW_S and r.t1 >= f["t"] and not r.connect:
            return f"in flight on {f['kind']} {f['replica']}"
    for a, b in run.gateway_down:
        if r.connect and a - 0.5 <= r.t1 <= b + 1.0:
            return "refused while nginx restarted"
    return None


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
    why = {id(r): explained(r, run) for r in failed}
    unexplained = [f"{r.t0 - started:.1f}-{r.t1 - started:.1f}s {r.error}" for r in failed if why[id(r)] is None]
    by_kind: dict[str, int] = {}
    for f in run.faults:
        if "skipped" not in f:
            by_kind[f["kind"]] = by_kind.get(f["kind"], 0) + 1
    report = {
        "seed": SEED, "duration_s": round(duration, 1), "faults": by_kind,
        "poisons": [f["poison"] for f in run.faults if "poison" in f],
        "requests": len(run.results), "failed": len(failed),
        "failed_in_flight_on_a_faulted_replica": sum(1 for w in why.values() if w and w.startswith("in flight")),
        "failed_refused_while_nginx_restarted": sum(1 for w in why.values() if w and w.startswith("refused")),
        "unexplained": len(unexplained), "gpu_conflicts": len(run.gpu_conflicts),
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
    assert not unexplained, f"{len(unexplained)} requests failed with no fault to explain them: {unexplained[:10]}"
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

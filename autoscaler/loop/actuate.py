"""Apply what reconcile decided, in one order, with the failure rules in one place.

The same class drives the live fleet (the Docker or local runtime in threads, nginx) and the simulator
(a simulated runtime and gateway, inline, on virtual time). The order:

1. the tick's events, recorded;
2. stops (in the background: a graceful stop takes seconds), sleeps and wakes (background too), role changes
   (written to the runtime, one by one; one failing does not stop the others);
3. the routes: a pool whose role change failed keeps the routes it had (the next tick sees the runtime's
   truth again); the activator learns them first (held requests go to a ready replica now, not after the
   reload), then the gateway, then which pools overflow;
4. the starts, the slow part, concurrently where the executor can. A start that fails is told to the next
   tick's Snapshot (`start_failures`): reconcile counts it towards the crash backoff, as every change of a
   pool's state happens there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from autoscaler.gateway.render import PoolRoute
from autoscaler.loop.actions import Action, StartFailure
from autoscaler.loop.record import Recorder
from autoscaler.loop.snapshot import Reconciled
from autoscaler.runtime.base import Runtime

log = logging.getLogger("gpufleet.actuate")

T = TypeVar("T")


class RouteSink(Protocol):
    """The gateway as the actuator sees it: the routes (a reload), and which pools overflow (a state file)."""

    async def update(self, routes: Sequence[PoolRoute], tag: object = None) -> bool: ...

    def publish_state(self, saturated: Mapping[str, bool], now: float) -> None: ...


class Executor(Protocol):
    """How the actuator runs what blocks or takes long: threads and tasks live, inline in the simulator."""

    async def call(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def each(self, coros: Sequence[Coroutine[Any, Any, None]]) -> None: ...

    def background(self, coro: Coroutine[Any, Any, None]) -> None: ...


class ThreadExecutor:
    """Live: blocking runtime calls in threads, starts concurrently, stops and sleeps as tasks the loop keeps."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def each(self, coros: Sequence[Coroutine[Any, Any, None]]) -> None:
        if coros:
            await asyncio.gather(*coros)

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class InlineExecutor:
    """The simulator: everything at once, in order, on the caller's (virtual) clock. Drive `apply` with
    `run_inline`: nothing in it may wait for anything real."""

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    async def each(self, coros: Sequence[Coroutine[Any, Any, None]]) -> None:
        for c in coros:
            await c

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        run_inline(coro)


def run_inline(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (the InlineExecutor's), without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        value: T = done.value
        return value
    coro.close()
    raise RuntimeError("an inline step waited for something: only the InlineExecutor's calls may run here")


@dataclass(frozen=True)
class Applied:
    """What the gateway was given this tick."""

    routes: tuple[PoolRoute, ...]
    route_ids: frozenset[str]


class Actuator:
    def __init__(
        self,
        runtime: Runtime,
        gateway: RouteSink,
        recorder: Recorder,
        executor: Executor,
        clock: Callable[[], float],
        *,
        publish_routes: Callable[[Sequence[PoolRoute]], None] | None = None,
        sleeper: Callable[[str, str], Awaitable[None]] | None = None,
        forget: Callable[[str], None] | None = None,
    ) -> None:
        """publish_routes: the activator (held requests go to a ready replica at once); sleeper(replica id,
        "sleep" | "wake"): the engine's sleep-mode call; forget(replica id): a removed replica's health."""
        self.runtime = runtime
        self.gateway = gateway
        self.recorder = recorder
        self.executor = executor
        self.clock = clock
        self.publish_routes = publish_routes
        self.sleeper = sleeper
        self.forget = forget
        self.busy: set[str] = set()  # replicas with a removal in flight
        self.sleeping_calls: set[str] = set()  # replicas with a sleep or wake-up in flight
        self.start_failures: list[StartFailure] = []  # for the next Snapshot (take_start_failures)
        self._last_routes: dict[str, PoolRoute] = {}

    def take_start_failures(self) -> tuple[StartFailure, ...]:
        out, self.start_failures = tuple(self.start_failures), []
        return out

    async def apply(self, out: Reconciled) -> Applied:
        self.recorder.record(out.events)
        starts: list[Action] = []
        failed: set[str] = set()  # pools with a role change that did not happen
        for a in out.actions:
            if a.kind == "stop":
                self.stop(a)
            elif a.kind in ("sleep", "wake"):
                self._sleep_or_wake(a)
            elif a.kind == "start":
                starts.append(a)
            elif not await self._set_role(a):
                failed.add(a.pool)
        routes = tuple(self._last_routes.get(p.name, p) if p.name in failed else p for p in out.routes)
        self._last_routes = {p.name: p for p in routes}
        if self.publish_routes is not None:
            self.publish_routes(routes)
        route_ids = frozenset(rid for p in routes for rid in p.replica_ids)
        await self.gateway.update(routes, route_ids)
        await self.executor.call(self.gateway.publish_state, out.saturated, self.clock())
        await self.executor.each([self._create(a) for a in starts])
        return Applied(routes, route_ids)

    def stop(self, a: Action, kind: str = "stop") -> None:
        """Stopping takes seconds (graceful first): never on the loop's critical path."""
        rid = a.replica
        assert rid is not None
        self.busy.add(rid)
        self.recorder.event(kind, a.pool, replica=rid, role=a.detail.get("role"), reason=a.reason)

        async def go() -> None:
            try:
                await self.executor.call(self.runtime.remove, rid)
            except Exception as e:  # the next tick sees it again and retries
                log.error("stopping %s failed: %s", rid, e)
            finally:
                self.busy.discard(rid)
                if self.forget is not None:
                    self.forget(rid)

        self.executor.background(go())

    def _sleep_or_wake(self, a: Action) -> None:
        rid = a.replica
        if rid is None or rid in self.sleeping_calls:
            return
        self.recorder.event(a.kind, a.pool, replica=rid, reason=a.reason)
        if self.sleeper is None:
            return
        self.sleeping_calls.add(rid)
        sleeper = self.sleeper

        async def go() -> None:
            try:
                await sleeper(rid, a.kind)
            finally:
                self.sleeping_calls.discard(rid)

        self.executor.background(go())

    async def _set_role(self, a: Action) -> bool:
        rid = a.replica
        assert rid is not None and a.role is not None
        try:
            await self.executor.call(self.runtime.set_role, rid, a.role, a.target, a.claimed_for)
        except Exception as e:  # one replica's failure must not stop the others' changes
            self.recorder.event("role_change_failed", a.pool, replica=rid, role=a.role,
                                reason=f"{type(e).__name__}: {e}")
            return False
        if a.kind == "promote":
            self.recorder.event("ready", a.pool, replica=rid, role=a.role, **a.detail)
        elif a.kind == "retarget":
            self.recorder.event("retarget", a.pool, replica=rid, target=a.target, reason=a.reason)
        else:
            self.recorder.event(a.kind, a.pool, replica=rid, reason=a.reason)
        return True

    async def _create(self, a: Action) -> None:
        spec = a.spec
        assert spec is not None
        try:
            r = await self.executor.call(self.runtime.create, spec)
        except Exception as e:  # an image missing, a daemon error: reconcile backs off, the next tick retries
            self.start_failures.append(StartFailure(spec.pool, spec.target_role, f"{type(e).__name__}: {e}"))
            return
        self.recorder.event("start", spec.pool, replica=r.id, target=spec.target_role, gpus=list(r.gpus),
                            reason=a.reason, placement=a.detail.get("placement", ""))

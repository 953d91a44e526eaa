"""Fencing inside one process: a step's code never runs for an execution that lost its
lease, and the journal refuses the writes of a superseded execution by its token.

Pauses are simulated in virtual time: each runtime has a clock of its own, and a
runtime whose clock does not move is paused (its tasks all wait on that clock). The
same faults with real processes (SIGSTOP, SIGKILL) are in ``test_crash.py``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import stalwart as sw
from stalwart.errors import StoreError
from stalwart.store import EventKind, Lease, SQLiteStore, Store
from stalwart.telemetry import Interceptor, RunEndInput
from stalwart.testing import MemoryStore

T0 = 1_700_000_000.0
LEASE = 30.0


async def until(check: Callable[[], Awaitable[bool]] | Callable[[], bool],
                what: str, *, rounds: int = 4000) -> None:
    """Wait for ``check`` (sync or async) to hold; fail after ``rounds`` tries."""
    for _ in range(rounds):
        got = check()
        if isinstance(got, Awaitable):
            got = await got
        if got:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting until {what}")


async def advance_until(clock: sw.FakeClock, check: Callable[[], bool], what: str, *,
                        step: float = 1.0, limit: int = 100) -> None:
    """Move ``clock`` on by ``step`` until ``check`` holds: a poll that was under way
    when time moved reads the clock again at its next turn."""
    for _ in range(limit):
        if check():
            return
        await clock.advance(step)
        await asyncio.sleep(0.01)  # journal threads answer in real time
    raise AssertionError(f"{what} did not happen within {limit * step}s of virtual time")


class RenewFaults:
    """A store whose ``renew`` can be made to fail, as when the heartbeat's connection
    is down; everything else goes to the real store."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.failing = False
        self.renewals: list[int] = []
        """The token of every renewal that reached the store."""

    async def renew(self, leases: Sequence[Lease], *, now: float,
                    lease_seconds: float) -> dict[str, Lease | None]:
        if self.failing:
            raise StoreError("the store cannot be reached (injected)")
        self.renewals.extend(lease.token for lease in leases)
        return await self.inner.renew(leases, now=now, lease_seconds=lease_seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _timer_started(store: Store, run_id: str) -> bool:
    return any(e.kind == EventKind.TIMER_STARTED for e in await store.load_events(run_id))


def _events(kind: EventKind, events: list[Any]) -> list[Any]:
    return [e for e in events if e.kind == kind]


class _Recording:
    """A model (the simulator) that notes each call and the token it was made under."""

    provider, name = "sim", "m"

    def __init__(self, calls: list[tuple[str, int]]) -> None:
        self.inner = sw.SimulatedModel("m", script=["b"] * 10)
        self.calls = calls

    async def complete(self, request: Any) -> Any:
        self.calls.append(("b", sw.current_step().fencing_token))
        return await self.inner.complete(request)


@pytest.mark.parametrize("kind", ["step", "tool", "model"])
async def test_a_paused_owner_stops_before_its_next_step(kind: str) -> None:
    """A is paused in an in-memory sleep past its lease; B takes the run over and
    finishes it. When A's clock moves again, its sleep ends and its next step (a step,
    a tool call or a model call) is refused by the fence: effect "b" runs once, by B."""
    store = MemoryStore()
    clock_a, clock_b = sw.FakeClock(start=T0), sw.FakeClock(start=T0)
    effects: list[tuple[str, int]] = []

    async def effect(label: str) -> str:
        effects.append((label, sw.current_step().fencing_token))
        return label

    tool = sw.Tool(effect, name="effect")
    model = _Recording(effects)
    agent = sw.Agent("agent", "sim:m")

    async def paused(ctx: sw.Context) -> str:
        a = await ctx.step(effect, "a")
        await ctx.sleep(4)  # in memory (park_after is 5)
        if kind == "tool":
            return a + await ctx.tool(tool, label="b")
        if kind == "model":
            return a + str(await agent.run(ctx, "go"))
        return a + await ctx.step(effect, "b")

    app_a = sw.Runtime(store, clock=clock_a, lease_seconds=LEASE, models={"sim:m": model})
    app_b = sw.Runtime(store, clock=clock_b, lease_seconds=LEASE, models={"sim:m": model})
    wf = app_a.workflow(name="paused")(paused)
    app_b.register(wf)
    async with app_a, app_b:
        handle = await app_a.start(wf, run_id="r")
        await until(lambda: effects == [("a", 1)], "A ran step a")
        await until(lambda: _timer_started(store, "r"), "A began its sleep")
        # A is paused: its clock stands still. B's lease check sees A's lease expire.
        await clock_b.advance(LEASE + 1)
        assert await app_b.handle("r").result() == "ab"
        assert effects == [("a", 1), ("b", 2)]
        # A wakes up: its sleep is over, its next step meets the fence.
        result_a = asyncio.create_task(handle.result())
        await clock_a.advance(LEASE + 1)
        assert await result_a == "ab"  # the run's result, B's; A's execution has stopped
        assert app_a.in_flight == 0
    assert effects == [("a", 1), ("b", 2)]
    events = await store.load_events("r")
    assert [e.step_id for e in _events(EventKind.STEP_COMPLETED, events)] == ["1", "3"]


async def test_result_in_the_paused_process_waits_until_its_execution_stopped() -> None:
    """A is paused inside a step's code; B finishes the run. A's handle.result() reports
    the run's result only once A's own execution has stopped, not while it still runs."""
    store = MemoryStore()
    clock_a, clock_b = sw.FakeClock(start=T0), sw.FakeClock(start=T0)
    inside = asyncio.Event()
    stopped: list[str] = []

    async def slow(who: str) -> str:
        if not inside.is_set():  # A's execution: held inside the step
            inside.set()
            try:
                await asyncio.Event().wait()
            finally:
                stopped.append("A's step")
        return who

    async def wf_fn(ctx: sw.Context) -> str:
        return await ctx.step(slow, "x")

    app_a = sw.Runtime(store, clock=clock_a, lease_seconds=LEASE)
    app_b = sw.Runtime(store, clock=clock_b, lease_seconds=LEASE)
    wf = app_a.workflow(name="held")(wf_fn)
    app_b.register(wf)

    async def result_of_a() -> tuple[str, list[str]]:
        out = await app_a.handle("r").result()
        return out, list(stopped)  # what had stopped when result() returned

    async with app_a, app_b:
        await app_a.start(wf, run_id="r")
        await inside.wait()
        waiter = asyncio.create_task(result_of_a())
        await clock_b.advance(LEASE + 1)
        assert await app_b.handle("r").result() == "x"
        assert not waiter.done()
        await clock_a.advance(LEASE + 1)  # A's result() and heartbeat wake together
        assert await waiter == ("x", ["A's step"])


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
async def test_same_worker_reclaiming_its_expired_lease_fences_the_old_execution(
        tmp_path: Path, backend: str) -> None:
    """The case a fencing token exists for. The heartbeat cannot reach the store, the
    lease expires while a step runs, and the same runtime (same owner id) claims the run
    again; a second execution runs the step. The first one's late outcome is refused by
    its token alone (owner and status match), and the run takes the second's."""
    inner: Store = SQLiteStore(tmp_path / "j.db") if backend == "sqlite" else MemoryStore()
    store = RenewFaults(inner)
    clock = sw.FakeClock(start=T0)
    gates = {1: asyncio.Event(), 2: asyncio.Event()}
    tokens: list[int] = []

    async def work() -> int:
        n = len(tokens) + 1
        tokens.append(sw.current_step().fencing_token)
        await gates[n].wait()
        return n

    app = sw.Runtime(store, clock=clock, lease_seconds=LEASE)  # type: ignore[arg-type]

    @app.workflow(name="reclaimed")
    async def wf(ctx: sw.Context) -> int:
        return await ctx.step(work)

    async with app:
        handle = await app.start(wf, run_id="r")
        await until(lambda: tokens == [1], "the first execution is inside the step")
        store.failing = True  # heartbeats fail from now on
        await clock.advance(LEASE + 1)
        await advance_until(clock, lambda: tokens == [1, 2],
                            "the same runtime claiming the run again")
        rec = await inner.get_run("r")
        assert rec is not None and rec.lease_owner == app.owner.id and rec.lease_token == 2
        gates[1].set()  # the superseded execution returns and tries to record
        await until(lambda: not app._worker.superseded, "the old execution ended")
        steps = _events(EventKind.STEP_COMPLETED, await inner.load_events("r"))
        assert steps == []  # its outcome was refused
        gates[2].set()
        assert await handle.result() == 2
    reopened = await _reopen(inner, tmp_path)
    steps = _events(EventKind.STEP_COMPLETED, await reopened.load_events("r"))
    assert [(e.step_id, e.payload) for e in steps] == [("1", "2")]


async def _reopen(inner: Store, tmp_path: Path) -> Store:
    if isinstance(inner, MemoryStore):
        return inner
    store = SQLiteStore(tmp_path / "j.db")
    await store.open()
    return store


async def test_a_step_near_its_lease_expiry_renews_it_in_the_store_first() -> None:
    """Steps far from their lease's expiry ask the store nothing. Once heartbeats failed
    long enough to bring the expiry within the margin, the next step renews the lease
    itself, then runs."""
    store = RenewFaults(MemoryStore())
    clock = sw.FakeClock(start=T0)
    holding, gate = asyncio.Event(), asyncio.Event()
    ran: list[int] = []

    async def work(i: int) -> int:
        ran.append(i)
        return i

    async def hold() -> None:
        holding.set()
        await gate.wait()

    app = sw.Runtime(store, clock=clock, lease_seconds=LEASE)  # type: ignore[arg-type]

    @app.workflow(name="steps")
    async def wf(ctx: sw.Context) -> int:
        for i in range(50):
            await ctx.step(work, i)
        await ctx.step(hold)
        return await ctx.step(work, 99)

    async with app:
        handle = await app.start(wf, run_id="r")
        await holding.wait()
        assert len(ran) == 50
        assert store.renewals == []  # the fast path: no store round trip per step
        store.failing = True
        await clock.advance(LEASE - app.lease_margin + 1)  # the heartbeat fails twice
        store.failing = False
        gate.set()
        assert await asyncio.wait_for(handle.result(), 10) == 99
    assert store.renewals == [1]  # the fence renewed the lease once, then step 99 ran
    assert ran[-1] == 99


async def test_a_sync_step_queued_for_a_thread_past_the_margin_is_not_run(
        caplog: pytest.LogCaptureFixture) -> None:
    """A synchronous step passed its fence, then waited for the only thread while the
    heartbeat failed: when the thread takes it, its lease may have lapsed, so it is not
    run. The runtime claims its own run again and the step runs once, later."""
    store = RenewFaults(MemoryStore())
    clock = sw.FakeClock(start=T0)
    entered, release = threading.Event(), threading.Event()
    effects: list[int] = []

    def block() -> None:
        entered.set()
        release.wait(10)

    def effect() -> None:
        effects.append(sw.current_step().fencing_token)

    app = sw.Runtime(store, clock=clock, lease_seconds=LEASE,  # type: ignore[arg-type]
                     thread_pool_size=1)

    @app.workflow(name="queued")
    async def wf(ctx: sw.Context) -> str:
        await ctx.gather(ctx.step(block), ctx.step(effect))
        return "done"

    caplog.set_level(logging.WARNING, "stalwart")
    async with app:
        handle = await app.start(wf, run_id="r")
        await until(entered.is_set, "the first step holds the thread")
        await until(lambda: app.thread_pool._work_queue.qsize() == 1,
                    "the second step waits for the thread")
        store.failing = True
        await clock.advance(LEASE - app.lease_margin + 1)  # within the margin, not expired
        store.failing = False
        release.set()
        await until(lambda: "waited for a thread" in caplog.text, "the step was refused")
        assert effects == []
        await clock.advance(app.poll_interval)  # the runtime's scan finds its own run idle
        assert await handle.result() == "done"
    assert effects == [2]


async def test_steps_tools_and_model_calls_see_the_lease_token(tmp_path: Path) -> None:
    """current_step().fencing_token in a step, a tool and a model adapter, and the
    ToolCall's, are the token of the lease the execution holds; a new claim raises it."""
    seen: list[tuple[str, int]] = []

    def plain() -> None:
        seen.append(("step", sw.current_step().fencing_token))

    def tool_fn(call: sw.ToolCall) -> str:
        seen.append(("tool", call.fencing_token))
        seen.append(("tool step", sw.current_step().fencing_token))
        return "t"

    class Recording:  # a Model: the simulator, noting the token its calls see
        provider, name = "sim", "m"

        def __init__(self) -> None:
            self.inner = sw.SimulatedModel("m", script=["hi"])

        async def complete(self, request: Any) -> Any:
            seen.append(("model", sw.current_step().fencing_token))
            return await self.inner.complete(request)

    app = sw.Runtime(tmp_path / "j.db", park_after=0, models={"sim:m": Recording()})
    agent = sw.Agent("a", "sim:m")
    tool = sw.Tool(tool_fn)

    @app.workflow(name="tokens")
    async def wf(ctx: sw.Context) -> str:
        await ctx.step(plain)
        await ctx.wait_for_signal("go")  # parks: the next claim has the next token
        await ctx.tool(tool)
        return await agent.run(ctx, "x")

    async with app:
        handle = await app.start(wf)
        await until(lambda: seen == [("step", 1)], "the first step ran")
        await until(lambda: _status_is(app, handle.run_id, sw.RunStatus.WAITING), "parked")
        await app.signal(handle.run_id, "go")
        assert await handle.result() == "hi"
        rec = await app.get_run(handle.run_id)
    assert rec.lease_token == 2
    assert seen == [("step", 1), ("tool", 2), ("tool step", 2), ("model", 2)]


async def _status_is(app: sw.Runtime, run_id: str, status: sw.RunStatus) -> bool:
    return (await app.get_run(run_id)).status == status


class SlowRelease:
    """A store whose ``append`` that ends a run returns only after the heartbeat's next
    renewal has been answered, as a PostgreSQL append still returns its connection to
    the pool after the commit: the renewal lands after the run ended and released its
    lease, and finds no lease."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.committed = asyncio.Event()
        self.released = asyncio.Event()
        self.answers: list[dict[str, Lease | None]] = []

    async def append(self, lease: Lease, events: Sequence[Any], *, now: float,
                     finish: Any = None) -> Any:
        result = await self.inner.append(lease, events, now=now, finish=finish)
        if finish is not None:
            self.committed.set()
            await self.released.wait()  # after the commit, before the caller resumes
        return result

    async def renew(self, leases: Sequence[Lease], *, now: float,
                    lease_seconds: float) -> dict[str, Lease | None]:
        answer = await self.inner.renew(leases, now=now, lease_seconds=lease_seconds)
        if self.committed.is_set():
            self.answers.append(answer)
            self.released.set()
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _Ends(Interceptor):
    """Notes the status each execution ends with (``None``: it ended without one)."""

    def __init__(self) -> None:
        self.ends: list[sw.RunStatus | None] = []

    def run_ended(self, input: RunEndInput) -> None:
        self.ends.append(input.status)


class _Hooks:
    def __init__(self, interceptor: Interceptor) -> None:
        self.interceptor = interceptor

    def bind(self, runtime: Any) -> Interceptor:
        return self.interceptor


@pytest.mark.parametrize("ending", ["completes", "parks"])
async def test_a_renewal_answered_after_the_run_ended_cancels_nothing(
        ending: str, caplog: pytest.LogCaptureFixture) -> None:
    """The heartbeat's renewal reaches the store after the execution's last write (the
    run completed or parked, its lease released) but before the execution resumed from
    that write: "no lease" then means the run ended, not that it was taken over. The
    execution is not cancelled: it sees its outcome (the interceptor is told it), and no
    takeover is logged."""
    store = SlowRelease(MemoryStore())
    clock = sw.FakeClock(start=T0)
    ends = _Ends()
    app = sw.Runtime(store, clock=clock, lease_seconds=LEASE, tracing=_Hooks(ends))  # type: ignore[arg-type]

    @app.workflow
    async def short(ctx: sw.Context) -> str:
        if ending == "parks":
            await ctx.sleep(3600)
        return "done"

    async with app:
        handle = await app.start(short)
        await until(store.committed.is_set, "the run's last write committed")
        await clock.advance(LEASE / 3)  # the heartbeat renews: the lease is gone
        await until(lambda: not app.in_flight, "the execution ended")
        assert store.answers == [{handle.run_id: None}]
        expected = sw.RunStatus.COMPLETED if ending == "completes" else sw.RunStatus.SLEEPING
        assert ends.ends == [expected]
        assert (await handle.status()) == expected
    assert "lease taken over" not in caplog.text

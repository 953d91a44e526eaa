"""``handle.events()``: a run's journal as a live stream, here or from another runtime.

In virtual time on the in-memory store: the stream yields each event once, in order, as
it is written, and ends with the event that ends the run; a runtime that does not
execute the run follows it by polling. Also: plain steps journal their timing when they
take 2 ms or more, and an agent's repaired tool calls are journaled once.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import stalwart as sw
from stalwart.errors import RunNotFoundError
from stalwart.store import Event, EventKind
from stalwart.testing import MemoryStore


def _app(clock: sw.FakeClock, store: MemoryStore) -> tuple[sw.Runtime, Any]:
    app = sw.Runtime(store, clock=clock, poll_interval=0.5)

    async def slow(x: int) -> int:
        await clock.sleep(0.25)
        return x + 1

    @app.workflow
    async def approve(ctx: sw.Context, x: int) -> int:
        y = await ctx.step(slow, x)
        ok = await ctx.wait_for_signal("go")
        return y if ok else -1

    return app, approve


async def _collect(stream: Any, into: list[Event]) -> None:
    async for ev in stream:
        into.append(ev)


async def test_the_stream_yields_each_event_live_and_ends_with_the_run() -> None:
    """Events arrive while the run executes (the signal wait is seen before the signal
    is sent), each once and in order, and the stream ends after ``run_completed``: the
    same events the journal holds."""
    clock, store = sw.FakeClock(autojump=True), MemoryStore()
    app, approve = _app(clock, store)
    got: list[Event] = []
    async with app:
        handle = await app.start(approve, 1, run_id="s1")
        follower = asyncio.ensure_future(_collect(handle.events(), got))
        while not any(e.kind == EventKind.SIGNAL_WAIT_STARTED for e in got):
            await clock.sleep(0.1)
        assert not follower.done()
        await handle.signal("go", True)
        await asyncio.wait_for(follower, 60)
        journal = await app.events("s1")
    assert [e.seq for e in got] == [e.seq for e in journal]
    assert got[-1].kind == EventKind.RUN_COMPLETED
    kinds = [e.kind for e in got]
    assert kinds.index(EventKind.STEP_TIMED) < kinds.index(EventKind.STEP_COMPLETED)
    timed = json.loads(next(e for e in got if e.kind == EventKind.STEP_TIMED).payload or "")
    assert timed["duration"] == pytest.approx(0.25)


async def test_another_runtime_follows_the_run_by_polling_the_store() -> None:
    """A client that executes nothing follows a run the app executes, from ``after``."""
    clock, store = sw.FakeClock(autojump=True), MemoryStore()
    app, approve = _app(clock, store)
    client = sw.Runtime(store, clock=clock, worker=False, poll_interval=0.5)
    got: list[Event] = []
    async with app, client:
        handle = await app.start(approve, 1, run_id="s2")
        follower = asyncio.ensure_future(_collect(client.handle("s2").events(after=1), got))
        while not any(e.kind == EventKind.SIGNAL_WAIT_STARTED for e in got):
            await clock.sleep(0.1)
        await handle.signal("go", False)
        await asyncio.wait_for(follower, 60)
        journal = await app.events("s2")
    assert [e.seq for e in got] == [e.seq for e in journal if e.seq > 1]
    assert got[-1].kind == EventKind.RUN_COMPLETED


async def test_an_ended_runs_stream_is_its_journal_and_an_unknown_run_is_an_error() -> None:
    """Following a run that has ended yields its journal and ends; a run that does not
    exist raises RunNotFoundError at the first step of the loop."""
    clock, store = sw.FakeClock(autojump=True), MemoryStore()
    app, approve = _app(clock, store)
    async with app:
        handle = await app.start(approve, 2, run_id="s3")
        await handle.signal("go", True)
        assert await handle.result() == 3
        got = [ev async for ev in handle.events()]
        assert [e.seq for e in got] == [e.seq for e in await app.events("s3")]
        with pytest.raises(RunNotFoundError):
            async for _ in app.handle("nope").events():
                pass


async def test_a_trivial_step_journals_no_timing() -> None:
    """A step under 2 ms adds no ``step_timed`` row (the common case costs nothing)."""
    clock, store = sw.FakeClock(autojump=True), MemoryStore()
    app = sw.Runtime(store, clock=clock)

    def inc(x: int) -> int:
        return x + 1

    @app.workflow
    async def quick(ctx: sw.Context) -> int:
        return await ctx.step(inc, 1)

    async with app:
        assert await app.run(quick, run_id="q") == 2
        kinds = [e.kind for e in await app.events("q")]
    assert EventKind.STEP_TIMED not in kinds and EventKind.STEP_COMPLETED in kinds


def _bad_then_good(request: sw.ModelRequest) -> Any:
    """First a call with broken JSON, then (after the repair) a real call, then text."""
    tool_turns = [m for m in request.messages if m.role == "tool"]
    if not tool_turns:
        return sw.ToolCallRequest(id="c1", name="lookup", arguments='{"city": "Oslo"')
    if len(tool_turns) == 1:
        return sw.ToolCallRequest.create("c2", "lookup", {"city": "Oslo"})
    return "sunny"


async def test_a_repaired_tool_call_is_journaled_once_also_across_a_resume() -> None:
    """The malformed call is journaled as ``tool_call_repaired`` on the model turn that
    made it, with the error sent back; the run then parks, and the execution that
    resumes it replays the agent without journaling the repair again."""
    clock, store = sw.FakeClock(autojump=True), MemoryStore()
    app = sw.Runtime(store, clock=clock, park_after=0.0)

    @app.tool
    def lookup(city: str) -> str:
        """Weather."""
        return f"{city}: sunny"

    agent = sw.Agent("bot", sw.FunctionModel(_bad_then_good), tools=[lookup])

    @app.workflow
    async def ask(ctx: sw.Context) -> str:
        answer = await agent.run(ctx, "Weather in Oslo?")
        await ctx.wait_for_signal("done")  # parks: the next execution replays the agent
        return answer

    async with app:
        handle = await app.start(ask, run_id="r")
        while (await app.get_run("r")).status != sw.RunStatus.WAITING:
            await clock.sleep(0.1)
        await handle.signal("done", None)
        assert await handle.result() == "sunny"
        events = await app.events("r")
    claims = [e for e in events if e.kind == EventKind.RUN_CLAIMED]
    repairs = [e for e in events if e.kind == EventKind.TOOL_CALL_REPAIRED]
    assert len(claims) == 2 and len(repairs) == 1
    (repair,) = repairs
    first_turn = next(e for e in events if e.kind == EventKind.STEP_COMPLETED)
    assert (repair.step_id, repair.name) == (first_turn.step_id, "lookup")
    info = json.loads(repair.payload or "")
    assert (info["call_id"], info["tool"], info["error"]) == ("c1", "lookup", "invalid_json")
    assert info["arguments"] == '{"city": "Oslo"'
    assert repair.seq < claims[1].seq


async def test_writes_made_here_wake_the_stream_without_waiting_for_a_poll() -> None:
    """With a poll of an hour, a stream on the runtime executing the run still sees each
    write at once (in virtual time: before ten seconds have passed)."""
    clock, store = sw.FakeClock(autojump=True), MemoryStore()
    app, approve = _app(clock, store)
    got: list[Event] = []
    async with app:
        handle = await app.start(approve, 1, run_id="w")
        follower = asyncio.ensure_future(_collect(handle.events(poll=3600), got))
        started = clock.monotonic()
        while not any(e.kind == EventKind.SIGNAL_WAIT_STARTED for e in got):
            assert clock.monotonic() - started < 10, got
            await clock.sleep(0.1)
        await handle.signal("go", True)
        signalled = clock.monotonic()
        while not follower.done():
            assert clock.monotonic() - signalled < 10, got
            await clock.sleep(0.1)
    assert got[-1].kind == EventKind.RUN_COMPLETED

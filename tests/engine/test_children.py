"""Child runs held by handles: ctx.start_child, ctx.wait_any and ctx.cancel_child."""

from __future__ import annotations

import pytest

import stalwart as sw
from stalwart.store import EventKind, RunStatus
from stalwart.testing import MemoryStore


def make_app() -> sw.Runtime:
    return sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True))


async def test_wait_any_replays_the_recorded_child_not_the_first_ended_now() -> None:
    """wait_any journals which child ended first; a replay returns that one even when,
    by then, a child earlier in the list has ended too."""
    app = make_app()

    @app.workflow
    async def nap(ctx: sw.Context, seconds: float) -> float:
        await ctx.sleep(seconds)
        return seconds

    @app.workflow
    async def parent(ctx: sw.Context) -> list[object]:
        slow = await ctx.start_child(nap, 100.0)
        fast = await ctx.start_child(nap, 10.0)
        first = await ctx.wait_any([slow, fast])
        await ctx.wait_for_signal("go")  # parks; the replay after it re-reads wait_any
        return [first.index, first.run_id == fast.run_id, first.result]

    async with app:
        handle = await app.start(parent, run_id="p")
        await app.clock.sleep(200)  # both children have ended; the parent is parked
        assert await handle.status() == RunStatus.WAITING
        await handle.signal("go")
        assert await handle.result() == [1, True, 10.0]
        kids = await app.store.list_runs(parent_run_id="p")
    assert sorted(k.run_id for k in kids) == ["p/1", "p/2"]  # started once each
    assert {k.status for k in kids} == {RunStatus.COMPLETED}


async def test_cancel_child_stops_a_running_child_and_reports_an_ended_one() -> None:
    """cancel_child cancels a child that still runs (its outcome: cancelled) and, for
    one that had ended, returns how it ended without cancelling anything."""
    app = make_app()

    @app.workflow
    async def nap(ctx: sw.Context, seconds: float) -> float:
        await ctx.sleep(seconds)
        return seconds

    @app.workflow
    async def parent(ctx: sw.Context) -> list[str]:
        long = await ctx.start_child(nap, 1000.0)
        short = await ctx.start_child(nap, 1.0)
        done = await ctx.wait_any([short])
        stopped = await ctx.cancel_child(long)
        again = await ctx.cancel_child(short)
        return [str(done.status), str(stopped.status), str(again.status), str(again.result)]

    async with app:
        assert await app.run(parent, run_id="p") == ["completed", "cancelled", "completed",
                                                     "1.0"]
        kids = {k.run_id: k.status for k in await app.store.list_runs(parent_run_id="p")}
    assert kids == {"p/1": RunStatus.CANCELLED, "p/2": RunStatus.COMPLETED}


async def test_a_failed_child_outcome_carries_its_error() -> None:
    """A failed child's outcome says failed, with its error's type and message."""
    app = make_app()

    @app.workflow
    async def bad(ctx: sw.Context) -> None:
        raise ValueError("nope")

    @app.workflow
    async def parent(ctx: sw.Context) -> list[object]:
        out = await ctx.wait_any([await ctx.start_child(bad)])
        return [out.ok, str(out.status), out.error_type, out.error_message, out.reason]

    async with app:
        ok, status, kind, message, reason = await app.run(parent)
    assert (ok, status, message) == (False, "failed", "nope")
    assert kind == "builtins.ValueError"
    assert reason == "failed: builtins.ValueError: nope"


async def test_start_child_journals_start_and_handle_in_one_append() -> None:
    """The child's start and the step's handle are journaled together, with the child
    run created in the same transaction (one commit)."""
    app = make_app()

    @app.workflow
    async def noop(ctx: sw.Context) -> None:
        return None

    @app.workflow
    async def parent(ctx: sw.Context) -> str:
        child = await ctx.start_child(noop)
        return child.run_id

    async with app:
        assert await app.run(parent, run_id="p") == "p/1"
        events = [(e.kind, e.step_id, e.name) for e in await app.events("p")]
    assert events[2:4] == [(EventKind.CHILD_STARTED, "1", "start:" + noop.name),
                           (EventKind.STEP_COMPLETED, "1", "start:" + noop.name)]


@pytest.mark.parametrize("call", ["wait_any_empty", "wait_any_junk", "cancel_junk"])
async def test_bad_handles_are_a_configuration_error(call: str) -> None:
    """wait_any of nothing or of non-handles, and cancel_child of a non-handle, fail with
    a ConfigurationError before any step is journaled."""
    app = make_app()

    @app.workflow
    async def parent(ctx: sw.Context) -> None:
        if call == "wait_any_empty":
            await ctx.wait_any([])
        elif call == "wait_any_junk":
            await ctx.wait_any(["p/1"])  # type: ignore[list-item]
        else:
            await ctx.cancel_child("p/1")  # type: ignore[arg-type]

    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(parent, run_id="p")
        kinds = [e.kind for e in await app.events("p")]
    assert caught.value.error_type.endswith("ConfigurationError")
    assert kinds == [EventKind.RUN_CREATED, EventKind.RUN_CLAIMED, EventKind.RUN_FAILED]

"""Replay after a restart, and non-determinism detection when the code changed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import stalwart as sw
from stalwart.store import EventKind

Body = Callable[[sw.Context], Awaitable[object]]


def a() -> str:
    return "a"


def b() -> str:
    return "b"


def c() -> str:
    return "c"


def d() -> str:
    return "d"


async def _until_status(app: sw.Runtime, run_id: str, status: sw.RunStatus) -> None:
    for _ in range(2000):
        rec = await app.store.get_run(run_id)
        if rec is not None and rec.status == status:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"run {run_id} never reached {status}")


async def _park_then_resume(db: Path, v1: Body, v2: Body) -> sw.RunRecord:
    """Run v1 until it parks on a timer; resume under v2 (same name) after the timer."""
    clock = sw.FakeClock()
    app1 = sw.Runtime(db, clock=clock)
    wf1 = app1.workflow(name="changing")(v1)
    async with app1:
        h = await app1.start(wf1)
        await _until_status(app1, h.run_id, sw.RunStatus.SLEEPING)
    app2 = sw.Runtime(db, clock=clock)
    app2.workflow(name="changing")(v2)
    async with app2:
        await clock.advance(100)
        return await app2.wait_for_end(h.run_id)


async def test_resume_replays_recorded_steps_without_running_them(tmp_path: Path) -> None:
    """Recorded steps return their journaled results; only new steps execute."""
    ran: list[str] = []

    def tracked(x: str) -> str:
        ran.append(x)
        return x * 2

    async def body(ctx: sw.Context) -> list[str]:
        first = await ctx.step(tracked, "p")
        await ctx.sleep(100)
        second = await ctx.step(tracked, "q")
        return [first, second]

    rec = await _park_then_resume(tmp_path / "j.db", body, body)
    assert rec.status == sw.RunStatus.COMPLETED
    assert rec.result == '["pp","qq"]'
    assert ran == ["p", "q"]


async def test_recorded_failure_replays_the_same_exception(tmp_path: Path) -> None:
    """A step failure caught by the workflow takes the same branch on replay."""
    tries: list[int] = []

    def flaky() -> None:
        tries.append(1)
        raise ConnectionError("down")

    async def body(ctx: sw.Context) -> str:
        try:
            await ctx.step(flaky)
            path = "ok"
        except ConnectionError:
            path = "recovered"
        await ctx.sleep(100)
        return path

    rec = await _park_then_resume(tmp_path / "j.db", body, body)
    assert rec.result == '"recovered"'
    assert tries == [1]


@pytest.mark.parametrize(
    ("change", "step_id", "recorded", "current"),
    [
        ("reordered", "1", "a", "b"),
        ("renamed", "2", "b", "d"),
        ("added", "2", "b", "d"),
        ("removed", "2", "b", "c"),
        ("removed_last", "3", "c", None),
    ],
)
async def test_changed_code_fails_the_run_with_non_determinism_error(
        tmp_path: Path, change: str, step_id: str, recorded: str, current: str | None) -> None:
    """Reordered, renamed, added or removed steps are caught and named on replay."""

    async def v1(ctx: sw.Context) -> None:
        await ctx.step(a)
        await ctx.step(b)
        await ctx.step(c)
        await ctx.sleep(100)

    bodies: dict[str, list[Callable[[], str]]] = {
        "reordered": [b, a, c],
        "renamed": [a, d, c],
        "added": [a, d, b, c],
        "removed": [a, c],
        "removed_last": [a, b],
    }

    async def v2(ctx: sw.Context) -> None:
        for fn in bodies[change]:
            await ctx.step(fn)
        await ctx.sleep(100)

    if change == "removed_last":
        async def v2_removed_last(ctx: sw.Context) -> None:  # the timer moves up, too
            await ctx.step(a)
            await ctx.step(b)

        v2 = v2_removed_last

    rec = await _park_then_resume(tmp_path / "j.db", v1, v2)
    assert rec.status == sw.RunStatus.DEAD_LETTERED  # waits for the code to be fixed
    assert rec.error is not None and "NonDeterminismError" in rec.error
    assert f"step {step_id} is recorded as {recorded!r}" in rec.error
    if current is not None:
        assert repr(current) in rec.error


async def test_non_determinism_error_carries_run_step_and_names(tmp_path: Path) -> None:
    """The raised error names the run, the step id, the recorded and the new step."""

    async def v1(ctx: sw.Context) -> None:
        await ctx.step(a)
        await ctx.sleep(100)

    async def v2(ctx: sw.Context) -> None:
        await ctx.step(b)

    db = tmp_path / "j.db"
    rec = await _park_then_resume(db, v1, v2)
    app = sw.Runtime(db)
    async with app:
        with pytest.raises(sw.RunFailedError) as info:
            app.outcome(rec)
    cause = info.value.__cause__
    assert isinstance(cause, sw.NonDeterminismError)
    assert (cause.run_id, cause.step_id, cause.recorded, cause.current) == (
        rec.run_id, "1", "a", "b")


async def test_a_run_stopped_by_changed_code_finishes_once_the_code_is_rolled_back(
        tmp_path: Path) -> None:
    """The divergence dead-letters the run instead of failing it for good; with the
    old code deployed again, a redrive replays the journal and finishes it."""

    async def v1(ctx: sw.Context) -> list[str]:
        first = await ctx.step(a)
        await ctx.sleep(100)
        return [first, await ctx.step(c)]

    async def v2(ctx: sw.Context) -> list[str]:
        return [await ctx.step(b)]

    db = tmp_path / "j.db"
    rec = await _park_then_resume(db, v1, v2)
    assert rec.status == sw.RunStatus.DEAD_LETTERED
    app = sw.Runtime(db)
    app.workflow(name="changing")(v1)  # rolled back
    async with app:
        await app.redrive(rec.run_id)
        done = await app.wait_for_end(rec.run_id)
    assert (done.status, done.result) == (sw.RunStatus.COMPLETED, '["a","c"]')


async def test_gather_step_ids_are_stable_across_replay(tmp_path: Path) -> None:
    """Branches replay from their recorded sub-paths, in any completion order."""
    ran: list[str] = []

    async def work(tag: str, delay: float) -> str:
        await asyncio.sleep(delay)
        ran.append(tag)
        return tag

    async def body(ctx: sw.Context) -> list[object]:
        first = await ctx.gather(ctx.step(work, "x", 0.03), ctx.step(work, "y", 0.0))
        await ctx.sleep(100)
        second = await ctx.gather(ctx.step(work, "z", 0.0), ctx.step(work, "w", 0.02))
        return [first, second]

    db = tmp_path / "j.db"
    rec = await _park_then_resume(db, body, body)
    assert rec.result == '[["x","y"],["z","w"]]'
    assert sorted(ran) == ["w", "x", "y", "z"]
    app = sw.Runtime(db)
    async with app:
        ids = [e.step_id for e in await app.events(rec.run_id)
               if e.kind == EventKind.STEP_COMPLETED]
    assert sorted(ids) == ["1/0/1", "1/1/1", "3/0/1", "3/1/1"]


async def test_stale_owner_cannot_write_after_takeover(tmp_path: Path) -> None:
    """Fencing: once another worker claims an expired lease, the old lease's writes fail."""
    from stalwart.store import NewEvent, Owner, SQLiteStore

    store = SQLiteStore(tmp_path / "j.db")
    await store.open()
    try:
        await store.create_run(run_id="r", workflow="w", input="{}", now=0.0)
        [old] = await store.claim(Owner("old", "h", 1), now=0.0, lease_seconds=10, limit=1)
        [new] = await store.claim(Owner("new", "h", 2), now=11.0, lease_seconds=10, limit=1)
        assert new.token == old.token + 1
        with pytest.raises(sw.LeaseLostError):
            await store.append(old, [NewEvent(EventKind.STEP_COMPLETED, "1", "x", "1")],
                               now=12.0)
        await store.append(new, [NewEvent(EventKind.STEP_COMPLETED, "1", "x", "2")], now=12.0)
        events = [e for e in await store.load_events("r") if e.kind == EventKind.STEP_COMPLETED]
        assert [e.payload for e in events] == ["2"]
    finally:
        await store.close()

"""Engine semantics: steps, values, gather, timers, signals, children, cancellation."""

from __future__ import annotations

import asyncio
import math
import random
import threading
from pathlib import Path

import pytest
from pydantic import BaseModel

import stalwart as sw
from stalwart.store import EventKind


class Brief(BaseModel):
    topic: str
    facts: list[str]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


async def test_steps_run_once_and_results_round_trip_with_types(db: Path) -> None:
    """A step annotated to return a model gets the model back; plain values stay plain."""
    app = sw.Runtime(db)
    calls: list[str] = []

    def research(topic: str) -> Brief:
        calls.append(topic)
        return Brief(topic=topic, facts=["a", "b"])

    async def count(xs: list[str]) -> int:
        return len(xs)

    @app.workflow
    async def wf(ctx: sw.Context, topic: str) -> dict[str, object]:
        brief = await ctx.step(research, topic)
        assert isinstance(brief, Brief)
        n = await ctx.step(count, brief.facts)
        return {"brief": brief.model_dump(), "n": n}

    async with app:
        out = await app.run(wf, "gpus")
    assert out == {"brief": {"topic": "gpus", "facts": ["a", "b"]}, "n": 2}
    assert calls == ["gpus"]


async def test_unannotated_model_results_are_their_json_data(db: Path) -> None:
    """Without an annotation a pydantic model is plain JSON data (a dict), live and on
    replay: the journal names no class to import; annotate the step to get the model."""
    app = sw.Runtime(db)

    def make():  # type: ignore[no-untyped-def]
        return Brief(topic="t", facts=[])

    def typed() -> Brief:
        return Brief(topic="t", facts=[])

    @app.workflow
    async def wf(ctx: sw.Context) -> list[str]:
        b = await ctx.step(make)
        c = await ctx.step(typed)
        return [type(b).__name__, type(c).__name__]

    async with app:
        assert await app.run(wf) == ["dict", "Brief"]


async def test_unserializable_result_fails_naming_the_step(db: Path) -> None:
    """A value that cannot be journaled is a SerializationError naming the step."""
    app = sw.Runtime(db)

    def bad() -> object:
        return object()

    @app.workflow
    async def wf(ctx: sw.Context) -> None:
        await ctx.step(bad, name="make-object")

    async with app:
        with pytest.raises(sw.RunFailedError) as info:
            await app.run(wf)
    assert isinstance(info.value.__cause__, sw.SerializationError)
    assert "make-object" in str(info.value) and "(1)" in str(info.value)


@pytest.mark.parametrize(("value", "declared", "problem"), [
    ("abc", int, "valid integer"),
    (math.nan, float, "valid number"),  # JSON has no NaN: it would be written as null
    ([1, "x"], list[int], "valid integer"),
], ids=["str-for-int", "nan-for-float", "str-in-list-of-int"])
async def test_a_result_that_would_not_read_back_as_its_type_is_not_recorded(
        db: Path, value: object, declared: object, problem: str) -> None:
    """A step or workflow result that replay could not read back as the declared type
    fails now, typed and naming the type; nothing unreadable lands in the journal."""
    app = sw.Runtime(db)

    def make() -> object:
        return value

    make.__annotations__["return"] = declared

    @app.workflow
    async def via_step(ctx: sw.Context) -> str:
        return repr(await ctx.step(make, name="make"))

    async def returns(ctx: sw.Context) -> object:
        return value

    returns.__annotations__["return"] = declared
    via_return = app.workflow(name="via_return")(returns)

    async with app:
        for wf in (via_step, via_return):
            handle = await app.start(wf)
            with pytest.raises(sw.RunFailedError) as info:
                await handle.result()
            cause = info.value.__cause__
            assert isinstance(cause, sw.SerializationError), cause
            assert problem in str(cause) and "declared type" in str(cause)
            events = await app.events(handle.run_id)
            assert not [e for e in events if e.kind in (
                EventKind.STEP_COMPLETED, EventKind.RUN_COMPLETED)]
            assert (await app.get_run(handle.run_id)).status == sw.RunStatus.FAILED


async def test_a_result_is_returned_as_replay_reads_it(db: Path) -> None:
    """A tuple for ``-> list[str]`` is recorded as a list; the first execution gets the
    list too, as every replay will."""
    app = sw.Runtime(db)

    def pair() -> list[str]:
        return ("a", "b")  # type: ignore[return-value]

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return type(await ctx.step(pair)).__name__

    async with app:
        assert await app.run(wf) == "list"


@pytest.mark.parametrize("call", ["sleep-nan", "sleep-inf", "sleep-negative",
                                  "signal-negative", "signal-nan"])
async def test_timers_refuse_durations_that_are_not_finite_and_non_negative(
        db: Path, call: str) -> None:
    """A NaN sleep returned at once, a negative signal timeout timed out at once: both
    are errors where they are asked for, before anything is journaled."""
    app = sw.Runtime(db)
    waits = {"sleep-nan": lambda ctx: ctx.sleep(math.nan),
             "sleep-inf": lambda ctx: ctx.sleep(math.inf),
             "sleep-negative": lambda ctx: ctx.sleep(-1),
             "signal-negative": lambda ctx: ctx.wait_for_signal("go", timeout=-1),
             "signal-nan": lambda ctx: ctx.wait_for_signal("go", timeout=math.nan)}

    @app.workflow
    async def wf(ctx: sw.Context) -> None:
        await waits[call](ctx)

    async with app:
        handle = await app.start(wf)
        with pytest.raises(sw.RunFailedError, match="finite, non-negative"):
            await handle.result()
        kinds = {e.kind for e in await app.events(handle.run_id)}
    assert not kinds & {EventKind.TIMER_STARTED, EventKind.SIGNAL_WAIT_STARTED}


async def test_bad_workflow_input_is_rejected_at_start(db: Path) -> None:
    """Arguments that do not match the workflow's annotations fail at start, typed."""
    app = sw.Runtime(db)

    @app.workflow
    async def wf(ctx: sw.Context, n: int) -> int:
        return n

    async with app:
        with pytest.raises(sw.SerializationError):
            await app.start(wf, "not a number")
        with pytest.raises(sw.ConfigurationError):
            await app.start(wf, 1, 2)
        assert await app.list_runs() == []


async def test_a_function_that_is_not_a_workflow_is_refused_at_start(db: Path) -> None:
    """``app.start(plain_function)``: a ConfigurationError naming the function and the
    decorator (it was an AttributeError: 'function' object has no attribute 'name')."""
    app = sw.Runtime(db)

    def plain(n: int) -> int:
        return n

    async with app:
        with pytest.raises(sw.ConfigurationError, match=r"plain is not a stalwart workflow: "
                                                        r"decorate it with @runtime\.workflow"):
            await app.start(plain, 1)  # type: ignore[call-overload]
        assert await app.list_runs() == []


def test_a_runtime_opened_in_an_ended_event_loop_refuses_rather_than_hangs(
        db: Path) -> None:
    """A second ``asyncio.run`` with a runtime the first one opened: one typed error at
    once (it waited forever on the first loop's scheduler and store thread)."""
    app = sw.Runtime(db)

    @app.workflow
    async def wf(ctx: sw.Context, n: int) -> int:
        return n + 1

    assert asyncio.run(app.run(wf, 1)) == 2
    with pytest.raises(sw.ConfigurationError, match="opened in another event loop"):
        asyncio.run(asyncio.wait_for(app.run(wf, 2), 30))


def test_a_second_run_sync_says_the_first_closed_the_runtime(db: Path) -> None:
    """run_sync closes the runtime after its run: a second call says so and what to do
    (it said only 'the runtime is closed')."""
    app = sw.Runtime(db)

    @app.workflow
    async def wf(ctx: sw.Context, n: int) -> int:
        return n + 1

    assert app.run_sync(wf, 1) == 2
    with pytest.raises(sw.StoreError, match=r"run_sync, which closes it after its run\): "
                                            r"make a new Runtime"):
        app.run_sync(wf, 2)


async def test_idempotency_key_is_run_and_step_and_visible_in_sync_steps(db: Path) -> None:
    """Code inside a step (sync, in a thread) sees run_id:step_id as its key."""
    app = sw.Runtime(db)

    def key() -> str:
        return sw.current_step().idempotency_key

    async def akey() -> str:
        return sw.current_step().idempotency_key

    @app.workflow
    async def wf(ctx: sw.Context) -> list[str]:
        return [await ctx.step(key), await ctx.step(akey)]

    async with app:
        h = await app.start(wf, run_id="order-42")
        assert await h.result() == ["order-42:1", "order-42:2"]
    with pytest.raises(sw.ContextMisuseError):
        sw.current_step()


async def test_start_with_same_run_id_returns_the_existing_run(db: Path) -> None:
    """A caller-chosen run id is an idempotency key for the whole run."""
    app = sw.Runtime(db)
    runs: list[int] = []

    def effect() -> int:
        runs.append(1)
        return len(runs)

    @app.workflow
    async def wf(ctx: sw.Context) -> int:
        return await ctx.step(effect)

    async with app:
        h1 = await app.start(wf, run_id="r1")
        assert await h1.result() == 1
        h2 = await app.start(wf, run_id="r1")
        assert not h2.created
        assert await h2.result() == 1
    assert runs == [1]


async def test_failed_step_is_recorded_and_reraised_with_its_type(db: Path) -> None:
    """A step's exception is journaled; the workflow can catch it by type."""
    app = sw.Runtime(db)

    def boom() -> None:
        raise ValueError("nope")

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        try:
            await ctx.step(boom)
        except ValueError as exc:
            return f"caught {exc}"
        return "not caught"

    async with app:
        h = await app.start(wf)
        assert await h.result() == "caught nope"
        kinds = [e.kind for e in await app.events(h.run_id)]
    assert EventKind.STEP_FAILED in kinds


async def test_workflow_failure_surfaces_as_run_failed_with_cause(db: Path) -> None:
    """An uncaught error fails the run; result() raises RunFailedError from the original."""
    app = sw.Runtime(db)

    @app.workflow
    async def wf(ctx: sw.Context) -> None:
        raise KeyError("missing")

    async with app:
        h = await app.start(wf)
        with pytest.raises(sw.RunFailedError) as info:
            await h.result()
        assert isinstance(info.value.__cause__, KeyError)
        assert (await app.get_run(h.run_id)).status == sw.RunStatus.FAILED


async def test_context_cannot_be_used_inside_a_step(db: Path) -> None:
    """Steps are leaves: calling ctx inside one is a ContextMisuseError."""
    app = sw.Runtime(db)

    @app.workflow
    async def wf(ctx: sw.Context) -> None:
        async def nested() -> None:
            await ctx.now()

        await ctx.step(nested)

    async with app:
        with pytest.raises(sw.RunFailedError) as info:
            await app.run(wf)
    assert isinstance(info.value.__cause__, sw.ContextMisuseError)


async def test_gather_returns_branch_order_under_random_latencies(db: Path) -> None:
    """Results come back in branch order whatever order the branches finish in."""
    app = sw.Runtime(db)
    rng = random.Random(7)
    finished: list[int] = []

    async def work(i: int) -> int:
        await asyncio.sleep(rng.uniform(0, 0.02))
        finished.append(i)
        return i * i

    @app.workflow
    async def wf(ctx: sw.Context) -> list[int]:
        async def branch(i: int) -> int:
            a = await ctx.step(work, i)
            b = await ctx.step(work, i + 100)
            return a + b

        return await ctx.gather(*(branch(i) for i in range(8)))

    async with app:
        h = await app.start(wf)
        out = await h.result()
        step_ids = {e.step_id for e in await app.events(h.run_id) if e.step_id}
    assert out == [i * i + (i + 100) ** 2 for i in range(8)]
    assert finished != sorted(finished)  # they really did finish out of order
    assert step_ids == {f"1/{i}/{k}" for i in range(8) for k in (1, 2)}


async def test_gather_cancel_mode_raises_lowest_failed_branch_and_cancels_others(
        db: Path) -> None:
    """on_error='cancel': the others are cancelled; the lowest failed branch's error wins."""
    app = sw.Runtime(db)
    cancelled: list[int] = []

    async def slow(i: int) -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    def fail(msg: str) -> None:
        raise RuntimeError(msg)

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        try:
            await ctx.gather(ctx.step(slow, 0), ctx.step(fail, "b1"), ctx.step(slow, 2))
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    async with app:
        assert await app.run(wf) == "b1"
    assert sorted(cancelled) == [0, 2]


async def test_gather_collect_mode_returns_exceptions_in_place(db: Path) -> None:
    """on_error='collect': every branch finishes; failures are returned in place."""
    app = sw.Runtime(db)

    def ok(i: int) -> int:
        return i

    def fail() -> int:
        raise ValueError("x")

    @app.workflow
    async def wf(ctx: sw.Context) -> list[str]:
        res = await ctx.gather(ctx.step(ok, 1), ctx.step(fail), ctx.step(ok, 3),
                               on_error="collect")
        return [type(r).__name__ if isinstance(r, Exception) else str(r) for r in res]

    async with app:
        assert await app.run(wf) == ["1", "ValueError", "3"]


async def test_now_random_uuid_are_recorded_and_replayed(db: Path) -> None:
    """ctx.now/random/uuid return the journaled values when the run is replayed."""
    clock = sw.FakeClock()
    app = sw.Runtime(db, clock=clock)
    seen: list[tuple[float, float, str]] = []

    @app.workflow
    async def wf(ctx: sw.Context) -> list[str]:
        t, r, u = await ctx.now(), await ctx.random(), str(await ctx.uuid())
        seen.append((t, r, u))
        await ctx.sleep(600)  # parks the run; it is replayed when it wakes
        t2, r2, u2 = await ctx.now(), await ctx.random(), str(await ctx.uuid())
        return [str(t), str(r), u, str(t2), str(r2), u2]

    async with app:
        h = await app.start(wf)
        await _until_status(app, h.run_id, sw.RunStatus.SLEEPING)
        await clock.advance(600)
        out = await h.result()
    assert len(seen) == 2 and seen[0] == seen[1]
    assert float(out[3]) == float(out[0]) + 600
    assert out[2] != out[5]


async def _until_status(app: sw.Runtime, run_id: str, status: sw.RunStatus) -> None:
    for _ in range(2000):
        rec = await app.store.get_run(run_id)
        if rec is not None and rec.status == status:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"run {run_id} never reached {status}")


async def test_durable_sleep_parks_and_wakes_after_a_restart_at_the_exact_time(
        db: Path) -> None:
    """A one-hour sleep parks the run; a new runtime wakes it exactly at the hour."""
    clock = sw.FakeClock(start=1_000_000.0)
    ran: list[str] = []

    def after() -> str:
        ran.append("after")
        return "done"

    def make(app: sw.Runtime) -> sw.Workflow:  # type: ignore[type-arg]
        @app.workflow(name="sleeper")
        async def sleeper(ctx: sw.Context) -> list[float]:
            t0 = await ctx.now()
            await ctx.sleep(3600)
            t1 = await ctx.now()
            await ctx.step(after)
            return [t0, t1]

        return sleeper

    app1 = sw.Runtime(db, clock=clock)
    wf = make(app1)
    async with app1:
        h = await app1.start(wf)
        await _until_status(app1, h.run_id, sw.RunStatus.SLEEPING)
        rec = await app1.get_run(h.run_id)
        assert rec.wake_at == 1_000_000.0 + 3600
        assert rec.lease_owner is None  # nothing is held while it sleeps
    assert ran == []

    app2 = sw.Runtime(db, clock=clock)
    make(app2)
    async with app2:
        await clock.advance(3599)
        assert await app2.resume(h.run_id) == []  # a claim a second early finds it not due
        assert (await app2.get_run(h.run_id)).status == sw.RunStatus.SLEEPING
        await clock.advance(1)
        out = await app2.handle(h.run_id).result()
    assert out == [1_000_000.0, 1_000_000.0 + 3600]
    assert ran == ["after"]


async def test_signal_sent_before_the_wait_is_kept(db: Path) -> None:
    """A signal that arrives before wait_for_signal starts is delivered to it."""
    app = sw.Runtime(db)
    gate = asyncio.Event()

    async def hold() -> None:
        await gate.wait()

    @app.workflow
    async def wf(ctx: sw.Context) -> object:
        await ctx.step(hold)
        return await ctx.wait_for_signal("approve", timeout=60)

    async with app:
        h = await app.start(wf)
        await _until_status(app, h.run_id, sw.RunStatus.RUNNING)
        await app.signal(h.run_id, "approve", {"by": "ann"})
        gate.set()
        assert await h.result() == {"by": "ann"}


async def test_signal_after_the_wait_wakes_a_parked_run(db: Path) -> None:
    """A run parked on a signal wakes when it arrives; each signal is delivered once."""
    clock = sw.FakeClock()
    app = sw.Runtime(db, clock=clock, park_after=0)

    @app.workflow
    async def wf(ctx: sw.Context) -> list[object]:
        a = await ctx.wait_for_signal("go")
        b = await ctx.wait_for_signal("go")
        return [a, b]

    async with app:
        h = await app.start(wf)
        await _until_status(app, h.run_id, sw.RunStatus.WAITING)
        await app.signal(h.run_id, "go", 1)  # wakes it: pending until it parks again
        await _until_status(app, h.run_id, sw.RunStatus.WAITING)
        taken = [e.step_id for e in await app.events(h.run_id)
                 if e.kind == EventKind.SIGNAL_RECEIVED]
        assert taken == ["1"]  # parked again at the second wait, after taking the first
        await app.signal(h.run_id, "go", 2)
        assert await h.result() == [1, 2]


async def test_signal_timeout_is_a_typed_error_in_virtual_time(db: Path) -> None:
    """No signal within the timeout raises SignalTimeoutError, also after parking."""
    clock = sw.FakeClock()
    app = sw.Runtime(db, clock=clock, park_after=0)

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        try:
            await ctx.wait_for_signal("approve", timeout=3600)
        except sw.SignalTimeoutError as exc:
            return f"timeout {exc.signal}"
        return "approved"

    async with app:
        h = await app.start(wf)
        await _until_status(app, h.run_id, sw.RunStatus.WAITING)
        assert (await app.get_run(h.run_id)).wake_at == clock.now() + 3600
        await clock.advance(3600)
        assert await h.result() == "timeout approve"


async def test_child_run_has_its_own_journal_and_links_to_the_parent(db: Path) -> None:
    """ctx.child runs a linked child and returns its typed result."""
    app = sw.Runtime(db)

    def summarize(topic: str) -> Brief:
        return Brief(topic=topic, facts=[topic.upper()])

    @app.workflow
    async def child(ctx: sw.Context, topic: str) -> Brief:
        return await ctx.step(summarize, topic)

    @app.workflow
    async def parent(ctx: sw.Context) -> list[str]:
        briefs = await ctx.gather(ctx.child(child, "a"), ctx.child(child, "b"))
        return [b.facts[0] for b in briefs]

    async with app:
        h = await app.start(parent)
        assert await h.result() == ["A", "B"]
        kids = await app.store.list_runs(parent_run_id=h.run_id)
    assert sorted(k.run_id for k in kids) == [f"{h.run_id}/1/0/1", f"{h.run_id}/1/1/1"]
    assert all(k.status == sw.RunStatus.COMPLETED for k in kids)


async def test_failed_child_raises_run_failed_in_the_parent(db: Path) -> None:
    """A child's failure reaches the parent as RunFailedError naming the child."""
    app = sw.Runtime(db)

    @app.workflow
    async def child(ctx: sw.Context) -> None:
        raise ValueError("child broke")

    @app.workflow
    async def parent(ctx: sw.Context) -> str:
        try:
            await ctx.child(child)
        except sw.RunFailedError as exc:
            return exc.error_type
        return "ok"

    async with app:
        assert await app.run(parent) == "builtins.ValueError"


async def test_parked_child_parks_the_parent_until_the_child_ends(db: Path) -> None:
    """A parent whose child sleeps long parks too and is woken by the child's end."""
    clock = sw.FakeClock()
    app = sw.Runtime(db, clock=clock, park_after=1)

    @app.workflow
    async def child(ctx: sw.Context) -> str:
        await ctx.sleep(100)
        return "rested"

    @app.workflow
    async def parent(ctx: sw.Context) -> str:
        return await ctx.child(child)

    async with app:
        h = await app.start(parent)
        await _until_status(app, f"{h.run_id}/1", sw.RunStatus.SLEEPING)
        await clock.advance(1)
        await _until_status(app, h.run_id, sw.RunStatus.WAITING)
        await clock.advance(100)
        assert await h.result() == "rested"


async def test_cancel_a_parked_run_and_its_children(db: Path) -> None:
    """Cancelling a sleeping run ends it at once, with its children."""
    clock = sw.FakeClock()
    app = sw.Runtime(db, clock=clock, park_after=0)

    @app.workflow
    async def child(ctx: sw.Context) -> None:
        await ctx.sleep(1000)

    @app.workflow
    async def parent(ctx: sw.Context) -> None:
        await ctx.child(child)

    async with app:
        h = await app.start(parent)
        await _until_status(app, f"{h.run_id}/1", sw.RunStatus.SLEEPING)
        await _until_status(app, h.run_id, sw.RunStatus.WAITING)
        await app.cancel(h.run_id)
        with pytest.raises(sw.RunCancelledError):
            await h.result()
        assert (await app.get_run(f"{h.run_id}/1")).status == sw.RunStatus.CANCELLED


@pytest.mark.parametrize("sender", ["this-runtime", "another-process"])
async def test_cancelling_a_parent_cancels_it_and_its_children_waiting_in_memory(
        db: Path, sender: str) -> None:
    """Children asleep in memory (not parked) wake on their parent's cancel, whether it
    is sent here or by another process (read from the store at a poll); the parent
    ends cancelled, not failed by its children's cancellation, nor completed."""
    app = sw.Runtime(db, poll_interval=0.05)

    @app.workflow
    async def napper(ctx: sw.Context) -> int:
        await ctx.sleep(3)  # < park_after: in memory
        return 1

    @app.workflow
    async def parent(ctx: sw.Context) -> list[int]:
        return await ctx.gather(ctx.child(napper), ctx.child(napper))

    async with app:
        h = await app.start(parent)
        for branch in (0, 1):
            await _until_status(app, f"{h.run_id}/1/{branch}/1", sw.RunStatus.RUNNING)
        if sender == "this-runtime":
            await app.cancel(h.run_id)
        else:
            async with sw.Runtime(db, worker=False) as other:
                await other.cancel(h.run_id)
        with pytest.raises(sw.RunCancelledError):
            await h.result(timeout=2.5)  # before the naps would have ended
        # A child asleep in another process's memory learns of the cancel at its own
        # poll, so it may end a poll after its parent: wait for it, but not for its nap.
        children = [f"{h.run_id}/1/0/1", f"{h.run_id}/1/1/1"]
        await asyncio.wait_for(asyncio.gather(*(
            _until_status(app, r, sw.RunStatus.CANCELLED) for r in children)), timeout=2)
        statuses = [(await app.get_run(r)).status for r in (h.run_id, *children)]
        events = await app.events(h.run_id)
    assert statuses == [sw.RunStatus.CANCELLED] * 3
    assert not [e for e in events if e.kind == EventKind.STEP_FAILED]  # not a failure


async def test_cancel_stops_a_run_waiting_for_a_signal_in_memory_at_once(db: Path) -> None:
    """A run waiting in memory for a signal stops when cancelled here, not when its
    wait would have parked (time stands still: it would never have)."""
    clock = sw.FakeClock()
    app = sw.Runtime(db, clock=clock)
    waiting = asyncio.Event()

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        async def begin() -> None:
            waiting.set()

        await ctx.step(begin)
        return str(await ctx.wait_for_signal("go"))

    async with app:
        h = await app.start(wf)
        await asyncio.wait_for(waiting.wait(), 10)
        await app.cancel(h.run_id)
        with pytest.raises(sw.RunCancelledError):
            await asyncio.wait_for(h.result(), 10)
        assert (await app.get_run(h.run_id)).status == sw.RunStatus.CANCELLED
    assert clock.monotonic() == 0.0


async def test_cancel_a_running_run_is_observed_at_the_next_step(db: Path) -> None:
    """A running run stops at its next step boundary; later steps never run."""
    app = sw.Runtime(db)
    gate = asyncio.Event()
    ran: list[str] = []

    async def first() -> None:
        ran.append("first")
        await gate.wait()

    def second() -> None:
        ran.append("second")

    @app.workflow
    async def wf(ctx: sw.Context) -> None:
        await ctx.step(first)
        await ctx.step(second)

    async with app:
        h = await app.start(wf)
        await _until_status(app, h.run_id, sw.RunStatus.RUNNING)
        while not ran:
            await asyncio.sleep(0.005)
        await app.cancel(h.run_id)
        gate.set()
        with pytest.raises(sw.RunCancelledError):
            await h.result()
    assert ran == ["first"]


async def test_unknown_run_id_is_a_typed_error(db: Path) -> None:
    """Reading, signalling or cancelling a missing run raises RunNotFoundError."""
    async with sw.Runtime(db) as app:
        with pytest.raises(sw.RunNotFoundError):
            await app.get_run("nope")
        with pytest.raises(sw.RunNotFoundError):
            await app.signal("nope", "x")
        with pytest.raises(sw.RunNotFoundError):
            await app.cancel("nope")


async def test_two_runtimes_racing_never_execute_one_run_twice(db: Path) -> None:
    """Two workers on one journal: every run executes each step exactly once."""
    effects: list[str] = []

    def effect(i: int) -> int:
        effects.append(sw.current_step().idempotency_key)
        return i

    def define(app: sw.Runtime) -> sw.Workflow:  # type: ignore[type-arg]
        @app.workflow(name="race")
        async def race(ctx: sw.Context, n: int) -> int:
            total = 0
            for i in range(5):
                total += await ctx.step(effect, i)
            return total + n

        return race

    a, b = sw.Runtime(db), sw.Runtime(db)
    wf = define(a)
    define(b)
    async with a, b:
        handles = [await a.start(wf, i) for i in range(20)]
        await b.resume()
        results = [await h.result() for h in handles]
        owners = set()
        for h in handles:
            for e in await a.events(h.run_id):
                if e.kind == EventKind.RUN_CLAIMED:
                    owners.add(e.name)
    assert results == [10 + i for i in range(20)]
    assert len(effects) == len(set(effects)) == 100
    assert owners <= {a.owner.id, b.owner.id}


async def test_close_does_not_hand_back_a_run_whose_step_runs_in_a_thread(db: Path) -> None:
    """close() cannot stop a thread: the run keeps its lease (it expires) rather than go
    back to pending while its step runs on; a run without one is handed back."""
    started, release = threading.Event(), threading.Event()

    def blocking() -> str:
        started.set()
        release.wait(10)
        return "late"

    app = sw.Runtime(db)

    @app.workflow
    async def held(ctx: sw.Context) -> str:
        return await ctx.step(blocking)

    @app.workflow
    async def waiting(ctx: sw.Context) -> str:
        return str(await ctx.wait_for_signal("go", timeout=3))

    try:
        async with app:
            one = await app.start(held)
            two = await app.start(waiting)
            assert await asyncio.to_thread(started.wait, 10)
            await _until_status(app, two.run_id, sw.RunStatus.RUNNING)
        assert app.held_by_threads == [one.run_id]
    finally:
        release.set()
    async with sw.Runtime(db, worker=False) as reader:
        kept, handed = await reader.get_run(one.run_id), await reader.get_run(two.run_id)
        events = await reader.events(one.run_id)
    assert (kept.status, kept.lease_owner is not None) == (sw.RunStatus.RUNNING, True)
    assert (handed.status, handed.lease_owner) == (sw.RunStatus.PENDING, None)
    assert not [e for e in events if e.kind == EventKind.STEP_COMPLETED]  # not recorded

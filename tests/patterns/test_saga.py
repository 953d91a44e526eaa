"""Sagas (ctx.saga): compensations in reverse on failure and on cancel, the pivot, a
compensation that keeps failing dead-letters the run with the saga's state, bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest

import stalwart as sw
from stalwart.store import EventKind, RunStatus
from stalwart.testing import MemoryStore

FAST = sw.Policy(retry=sw.Retry(max_attempts=3, initial=0.5, max_backoff=1.0))


class Trip:
    """A travel agency's ledger: what is booked, and every call with its key."""

    def __init__(self) -> None:
        self.booked: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.refuse_cancel: set[str] = set()

    def book(self, item: str) -> str:
        key = sw.current_step().idempotency_key
        self.calls.append((f"book {item}", key))
        if item == "car":
            raise ValueError("no cars left")
        self.booked[item] = f"{item}-ref"
        return f"{item}-ref"

    def cancel(self, ref: str, call: sw.ToolCall) -> None:
        self.calls.append((f"cancel {ref}", call.idempotency_key))
        if ref in self.refuse_cancel:
            raise ConnectionError(f"cancel of {ref} timed out")
        self.booked.pop(ref.removesuffix("-ref"), None)


def memory_app() -> sw.Runtime:
    return sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True))


def saga_app(app: sw.Runtime, trip: Trip, *, items: tuple[str, ...] = ("flight", "hotel",
                                                                          "car"),
             pivot: str | None = None, wait: float = 0.0) -> Any:
    book = trip.book
    cancel = sw.Tool(trip.cancel, name="cancel")

    @app.workflow
    async def travel(ctx: sw.Context) -> list[str]:
        async with ctx.saga(policy=FAST) as saga:
            refs = []
            for item in items:
                if item == pivot:
                    refs.append(await saga.pivot(book, item, name=f"book {item}"))
                elif saga.pivoted:  # retried forward, never compensated
                    refs.append(await saga.step(book, item, name=f"book {item}"))
                else:
                    refs.append(await saga.step(book, item, name=f"book {item}",
                                                compensate=cancel))
                if wait:
                    await ctx.sleep(wait)
            return refs

    return travel


async def step_names(app: sw.Runtime, run_id: str) -> list[str]:
    return [e.name or "" for e in await app.events(run_id)
            if e.kind == EventKind.STEP_COMPLETED]


async def test_a_saga_that_completes_compensates_nothing() -> None:
    """All steps done: nothing is undone, and the saga's cleanup scope is opened and
    closed around its compensable steps."""
    app, trip = memory_app(), Trip()
    travel = saga_app(app, trip, items=("flight", "hotel"))
    async with app:
        assert await app.run(travel, run_id="t") == ["flight-ref", "hotel-ref"]
        names = await step_names(app, "t")
    assert trip.booked == {"flight": "flight-ref", "hotel": "hotel-ref"}
    assert names == ["stalwart.cleanup_opened", "book flight", "book hotel",
                     "stalwart.cleanup_closed"]


async def test_a_failed_step_compensates_the_completed_ones_in_reverse() -> None:
    """The car cannot be booked: the hotel, then the flight, are cancelled, each as its
    own tool step with its own idempotency key and the step's result as argument; then
    the step's own error fails the run."""
    app, trip = memory_app(), Trip()
    travel = saga_app(app, trip)
    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(travel, run_id="t")
        names = await step_names(app, "t")
    assert caught.value.error_type == "builtins.ValueError"
    assert trip.booked == {}
    assert [c for c, _ in trip.calls] == ["book flight", "book hotel", "book car",
                                          "cancel hotel-ref", "cancel flight-ref"]
    keys = [k for _, k in trip.calls]
    assert len(set(keys)) == 5 and all(k.startswith("t:") for k in keys)
    assert names == ["stalwart.cleanup_opened", "book flight", "book hotel", "tool:cancel",
                     "tool:cancel", "stalwart.cleanup_closed"]


async def test_the_workflow_can_catch_the_error_after_the_rollback() -> None:
    """`except` around the saga sees the original error, after the compensations ran."""
    app, trip = memory_app(), Trip()
    cancel = sw.Tool(trip.cancel, name="cancel")

    @app.workflow
    async def travel(ctx: sw.Context) -> str:
        try:
            async with ctx.saga() as saga:
                await saga.step(trip.book, "flight", compensate=cancel)
                await saga.step(trip.book, "car", compensate=cancel)
        except ValueError as exc:
            return f"rolled back: {exc}; still booked: {sorted(trip.booked)}"
        return "booked"

    async with app:
        assert await app.run(travel) == "rolled back: no cars left; still booked: []"


async def test_compensations_take_the_result_nothing_or_explicit_arguments() -> None:
    """compensate gets the step's result, or nothing if it takes no argument;
    saga.compensation registers a call with its own arguments before a risky step."""
    app = memory_app()
    undone: list[str] = []

    def undo_with(ref: str) -> None:
        undone.append(f"with {ref}")

    def undo_plain() -> None:
        undone.append("plain")

    def undo_explicit(what: str, times: int) -> None:
        undone.append(f"explicit {what} x{times}")

    def ok(x: str) -> str:
        return f"{x}!"

    def risky() -> None:
        raise RuntimeError("half done")

    @app.workflow
    async def wf(ctx: sw.Context) -> None:
        async with ctx.saga() as saga:
            await saga.step(ok, "a", compensate=undo_with)
            await saga.step(ok, "b", compensate=undo_plain)
            await saga.compensation(undo_explicit, "c", times=2)
            await saga.step(risky)

    async with app:
        with pytest.raises(sw.RunFailedError):
            await app.run(wf)
    assert undone == ["explicit c x2", "plain", "with a!"]


async def test_after_the_pivot_a_failure_compensates_nothing() -> None:
    """Once the pivot completed the saga is committed: a later failure leaves every
    booking in place (forward recovery), and fails the run with its own error."""
    app, trip = memory_app(), Trip()
    travel = saga_app(app, trip, pivot="hotel")
    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(travel, run_id="t")
        names = await step_names(app, "t")
    assert caught.value.error_type == "builtins.ValueError"
    assert trip.booked == {"flight": "flight-ref", "hotel": "hotel-ref"}
    assert "tool:cancel" not in names
    # the cleanup scope closes when the pivot commits
    assert names == ["stalwart.cleanup_opened", "book flight", "book hotel",
                     "stalwart.cleanup_closed"]


async def test_a_failing_pivot_compensates_the_steps_before_it() -> None:
    """The pivot itself failing is a failure before the point of no return."""
    app, trip = memory_app(), Trip()
    travel = saga_app(app, trip, pivot="car")
    async with app:
        with pytest.raises(sw.RunFailedError):
            await app.run(travel, run_id="t")
    assert trip.booked == {}
    assert [c for c, _ in trip.calls][-2:] == ["cancel hotel-ref", "cancel flight-ref"]


@pytest.mark.parametrize("misuse", ["compensate_after_pivot", "second_pivot",
                                    "not_callable", "outside"])
async def test_misuse_is_a_configuration_error(misuse: str) -> None:
    """compensate= after the pivot, a second pivot, a compensate that is not callable
    and a saga used outside `async with` are ConfigurationErrors naming the problem;
    the step is not run."""
    app = memory_app()
    ran: list[str] = []

    def ok(x: str) -> str:
        ran.append(x)
        return x

    @app.workflow
    async def wf(ctx: sw.Context) -> None:
        if misuse == "outside":
            await ctx.saga().step(ok, "x")
            return
        async with ctx.saga() as saga:
            if misuse == "not_callable":
                await saga.step(ok, "a", compensate="cancel_a")
            await saga.pivot(ok, "p")
            if misuse == "compensate_after_pivot":
                await saga.step(ok, "b", compensate=ok)
            else:
                await saga.pivot(ok, "q")

    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(wf, run_id="m")
        names = await step_names(app, "m")
    assert caught.value.error_type.endswith("ConfigurationError")
    message = str(caught.value)
    expected = {"compensate_after_pivot": ("comes after the pivot", ["p"]),
                "second_pivot": ("a saga has one pivot", ["p"]),
                "not_callable": ("must be a callable or a Tool, not str", []),
                "outside": ("async with ctx.saga()", [])}[misuse]
    assert expected[0] in message
    assert ran == expected[1]
    if misuse in ("not_callable", "outside"):
        assert names == []  # nothing was journaled


async def test_a_resilience_error_rolled_back_fails_the_run_as_saga_aborted() -> None:
    """A step that exhausted its retries (a ResilienceError, which would dead-letter the
    run) is compensated and raised as SagaAbortedError: the run fails, and a redrive
    cannot resume an undone saga forward."""
    app = memory_app()
    undone: list[str] = []

    def flaky_tool() -> str:
        raise ConnectionError("provider down")

    tool = sw.Tool(flaky_tool, name="flaky", policy=FAST)

    def undo(ref: str) -> None:
        undone.append(ref)

    def ok() -> str:
        return "ref-1"

    @app.workflow
    async def wf(ctx: sw.Context) -> None:
        async with ctx.saga() as saga:
            await saga.step(ok, compensate=undo)
            await saga.step(tool)

    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(wf, run_id="r")
        rec = await app.get_run("r")
    assert rec.status == RunStatus.FAILED
    assert caught.value.error_type.endswith("SagaAbortedError")
    assert undone == ["ref-1"]


async def test_a_compensation_that_keeps_failing_dead_letters_with_the_saga_state() -> None:
    """The hotel cannot be cancelled: after its retries the run is dead-lettered at that
    compensation's step, the error says what was done, undone and not undone; once the
    hotel answers again, a redrive cancels it and the flight, and the run fails with the
    car's error."""
    app, trip = memory_app(), Trip()
    trip.refuse_cancel.add("hotel-ref")
    travel = saga_app(app, trip, items=("flight", "hotel", "boat", "car"))
    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(travel, run_id="t")
        rec = await app.get_run("t")
        dead = [e for e in await app.events("t") if e.kind == EventKind.RUN_DEAD_LETTERED]
        assert rec.status == RunStatus.DEAD_LETTERED
        assert caught.value.error_type.endswith("CompensationFailedError")
        message = json.loads(rec.error or "{}")["message"]
        assert "done: book flight, book hotel, book boat" in message
        assert "undone: book boat" in message
        assert "not undone: book hotel, book flight" in message
        attempts = [c for c, _ in trip.calls if c == "cancel hotel-ref"]
        assert len(attempts) == 3  # FAST: three attempts
        failed_step = dead[0].step_id
        trip.refuse_cancel.clear()
        await app.redrive("t")
        with pytest.raises(sw.RunFailedError) as again:
            await app.handle("t").result()
        events = await app.events("t")
    assert again.value.error_type == "builtins.ValueError"
    assert trip.booked == {}
    cancels = [c for c, _ in trip.calls if c.startswith("cancel")]
    assert cancels == ["cancel boat-ref", *["cancel hotel-ref"] * 4, "cancel flight-ref"]
    completed = [e.step_id for e in events if e.kind == EventKind.STEP_COMPLETED
                 and e.name == "tool:cancel"]
    assert failed_step in completed


@pytest.mark.parametrize("when", ["running", "parked"])
async def test_cancel_of_the_run_compensates_then_ends_cancelled(when: str) -> None:
    """A cancel inside the saga, while the run sleeps in memory or while it is parked
    (the store wakes a run that holds a saga instead of ending it), runs the
    compensations of the completed steps, in reverse, under a shield; the run ends
    cancelled."""
    app, trip = memory_app(), Trip()
    travel = saga_app(app, trip, items=("flight", "hotel", "boat"),
                      wait=2.0 if when == "running" else 3600.0)
    async with app:
        handle = await app.start(travel, run_id="t")
        await app.clock.sleep(3.0 if when == "running" else 4000.0)  # after the hotel
        if when == "parked":
            assert await handle.status() == RunStatus.SLEEPING
        await handle.cancel()
        with pytest.raises(sw.RunCancelledError):
            await handle.result()
        names = await step_names(app, "t")
    assert [c for c, _ in trip.calls] == ["book flight", "book hotel", "cancel hotel-ref",
                                          "cancel flight-ref"]
    assert trip.booked == {}
    assert names[-3:] == ["tool:cancel", "tool:cancel", "stalwart.cleanup_closed"]


async def test_cancel_after_the_pivot_compensates_nothing() -> None:
    """Committed, the saga holds no cancel: a parked run is cancelled at once by the
    store and keeps its bookings."""
    app, trip = memory_app(), Trip()
    travel = saga_app(app, trip, items=("flight", "hotel", "boat"), pivot="hotel",
                      wait=3600.0)
    async with app:
        await app.start(travel, run_id="t")
        await app.clock.sleep(4000.0)
        rec = await app.cancel("t")
        assert rec.status == RunStatus.CANCELLED
    assert trip.booked == {"flight": "flight-ref", "hotel": "hotel-ref"}


async def test_compensation_order_is_reverse_journal_order_across_gather_branches() -> None:
    """Steps made in gather branches are compensated in reverse step-id order, whatever
    order they completed in, so a replay compensates in the same order."""
    app = memory_app()
    undone: list[str] = []

    def undo(ref: str) -> None:
        undone.append(ref)

    async def book(ref: str, delay: float) -> str:
        return ref

    @app.workflow
    async def wf(ctx: sw.Context) -> None:
        async with ctx.saga() as saga:
            async def branch(name: str, delay: float) -> str:
                await ctx.sleep(delay)
                return await saga.step(book, name, delay, compensate=undo)
            await ctx.gather(branch("slow", 3.0), branch("fast", 1.0))
            raise ValueError("after the fan-out")

    async with app:
        with pytest.raises(sw.RunFailedError):
            await app.run(wf)
    assert undone == ["fast", "slow"]  # branch 1's step id is after branch 0's


async def test_cancel_of_a_parked_saga_on_a_real_store(store_url: str) -> None:
    """On SQLite and PostgreSQL too: a parked saga is woken by the cancel, compensates,
    and ends cancelled."""
    app, trip = sw.Runtime(store_url, poll_interval=0.05, park_after=0.1), Trip()
    travel = saga_app(app, trip, items=("flight", "hotel", "boat"), wait=3600.0)
    async with app:
        handle = await app.start(travel, run_id="t")
        while await handle.status() != RunStatus.SLEEPING:
            await app.clock.sleep(0.02)
        rec = await app.cancel("t")
        assert rec.status == RunStatus.PENDING  # woken to clean up, not ended
        with pytest.raises(sw.RunCancelledError):
            await handle.result(timeout=30)
    assert [c for c, _ in trip.calls] == ["book flight", "cancel flight-ref"]

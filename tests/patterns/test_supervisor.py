"""Supervision trees (ctx.supervise) in virtual time: restart types, strategies,
restart intensity on the journaled clock, escalation, and bad input."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

import stalwart as sw
from stalwart.store import EventKind, RunStatus
from stalwart.testing import MemoryStore

T0 = 1_700_000_000.0


@dataclass
class Fixture:
    app: sw.Runtime
    attempts: Counter[str]
    flaky: Any
    long_lived: Any


def make_app() -> Fixture:
    """A runtime in virtual time with children that fail their first N attempts, or that
    live long."""
    app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(T0, autojump=True))
    attempts: Counter[str] = Counter()

    async def attempt(name: str) -> int:
        attempts[name] += 1
        return attempts[name]

    @app.workflow
    async def flaky(ctx: sw.Context, name: str, fails: int, delay: float) -> str:
        await ctx.sleep(delay)
        n = await ctx.step(attempt, name)
        if n <= fails:
            raise ValueError(f"{name} attempt {n} failed")
        return f"{name} ok after {n}"

    @app.workflow
    async def long_lived(ctx: sw.Context, name: str, seconds: float) -> str:
        await ctx.step(attempt, name)
        await ctx.sleep(seconds)
        return f"{name} done"

    return Fixture(app, attempts, flaky, long_lived)


async def children_of(app: sw.Runtime, run_id: str) -> list[tuple[str, str, RunStatus]]:
    """(child run id, workflow input's first argument, status) in start order."""
    runs = await app.store.list_runs(parent_run_id=run_id, limit=1000)
    runs.sort(key=lambda r: int(r.run_id.rpartition("/")[2]))
    return [(r.run_id, json.loads(r.input)[0] if r.input.startswith("[")
             else json.loads(r.input)["name"], r.status) for r in runs]


async def records(app: sw.Runtime, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(e.payload or "{}") for e in await app.events(run_id)
            if e.kind == EventKind.STEP_COMPLETED
            and e.name in ("supervisor:restart", "supervisor:escalate")]


def spec(wf: Any, *args: Any, id: str, restart: str = "transient") -> sw.ChildSpec:
    return sw.ChildSpec(wf, args, id=id, restart=restart)  # type: ignore[arg-type]


async def test_one_for_one_restarts_only_the_failed_transient_child() -> None:
    """A transient child that fails twice is restarted twice (each restart journaled with
    its reason, time and count) and the supervisor returns every child's last outcome;
    its sibling is started once."""
    f = make_app()

    @f.app.workflow
    async def sup(ctx: sw.Context) -> dict[str, sw.ChildOutcome]:
        return await ctx.supervise([spec(f.flaky, "a", 2, 10.0, id="a"),
                                    spec(f.flaky, "b", 0, 50.0, id="b")])

    async with f.app:
        out = await f.app.run(sup, run_id="s1")
        kids = await children_of(f.app, "s1")
        recs = await records(f.app, "s1")
    assert {k: (v.status, v.result) for k, v in out.items()} == {
        "a": (RunStatus.COMPLETED, "a ok after 3"), "b": (RunStatus.COMPLETED, "b ok after 1")}
    assert f.attempts == {"a": 3, "b": 1}
    assert [(name, status) for _, name, status in kids] == [
        ("a", RunStatus.FAILED), ("b", RunStatus.COMPLETED), ("a", RunStatus.FAILED),
        ("a", RunStatus.COMPLETED)]
    assert [(r["child"], r["restarts_in_window"], r["restarted"], r["at"]) for r in recs] == [
        ("a", 1, ["a"], T0 + 10), ("a", 2, ["a"], T0 + 20)]
    assert recs[0]["reason"].startswith("failed: ") and "a attempt 1 failed" in recs[0]["reason"]


async def test_restart_types_permanent_transient_temporary() -> None:
    """After a normal end a permanent child is restarted (and counts toward the
    intensity), a transient or temporary one is not; after a failure a temporary child
    is not restarted either."""
    f = make_app()

    @f.app.workflow
    async def sup(ctx: sw.Context) -> dict[str, sw.ChildOutcome]:
        return await ctx.supervise([
            spec(f.flaky, "perm", 0, 10.0, id="perm", restart="permanent"),
            spec(f.flaky, "trans", 0, 10.0, id="trans", restart="transient"),
            spec(f.flaky, "temp", 1, 10.0, id="temp", restart="temporary"),
        ], max_restarts=2, within=1000)

    async with f.app:
        with pytest.raises(sw.RunFailedError) as caught:
            await f.app.run(sup, run_id="s1")
        recs = await records(f.app, "s1")
    assert caught.value.error_type.endswith("RestartIntensityError")
    assert f.attempts == {"perm": 3, "trans": 1, "temp": 1}
    assert [(r["child"], r["restarts_in_window"], r.get("escalated", False)) for r in recs] == [
        ("perm", 1, False), ("perm", 2, False), ("perm", 3, True)]


@pytest.mark.parametrize(("restart", "runs"), [("transient", 1), ("permanent", 2)])
async def test_a_child_cancelled_from_outside_ended_normally(restart: str, runs: int) -> None:
    """A child cancelled by an operator ended like OTP's shutdown: a transient child is
    not restarted, a permanent one is."""
    f = make_app()

    @f.app.workflow
    async def sup(ctx: sw.Context) -> dict[str, sw.ChildOutcome]:
        return await ctx.supervise([spec(f.long_lived, "a", 100.0, id="a", restart=restart)],
                                   max_restarts=1)

    async with f.app:
        handle = await f.app.start(sup, run_id="s1")
        await f.app.clock.sleep(10)
        await f.app.cancel("s1/1")
        if restart == "transient":
            assert (await handle.result())["a"].status == RunStatus.CANCELLED
        else:
            await f.app.clock.sleep(10)
            assert await handle.status() != RunStatus.FAILED
            await handle.cancel()
        kids = await children_of(f.app, "s1")
    assert len(kids) == runs


@pytest.mark.parametrize(("delay", "escalates_at"), [(20.0, T0 + 80), (21.0, None)])
async def test_intensity_counts_restarts_in_the_window_on_the_journaled_clock(
        delay: float, escalates_at: float | None) -> None:
    """max_restarts=3 within=60: a child failing every 20 s has its 4th restart due at
    +80 s with three restarts at +20, +40, +60 still in the window (its lower edge is
    inclusive, as OTP's), so the supervisor escalates then; failing every 21 s, the
    oldest restart has left the window each time and it never escalates."""
    f = make_app()

    @f.app.workflow
    async def sup(ctx: sw.Context) -> dict[str, sw.ChildOutcome]:
        return await ctx.supervise([spec(f.flaky, "x", 6, delay, id="x")],
                                   max_restarts=3, within=60)

    async with f.app:
        handle = await f.app.start(sup, run_id="s1")
        if escalates_at is None:
            out = await handle.result()
            assert out["x"].result == "x ok after 7"
        else:
            with pytest.raises(sw.RunFailedError):
                await handle.result()
        recs = await records(f.app, "s1")
        rec = await f.app.get_run("s1")
    if escalates_at is None:
        assert [r["restarts_in_window"] for r in recs] == [1, 2, 3, 3, 3, 3]
        return
    assert [r["at"] for r in recs] == [T0 + 20, T0 + 40, T0 + 60, escalates_at]
    assert recs[-1]["escalated"] and recs[-1]["restarts_in_window"] == 4
    error = json.loads(rec.error or "{}")
    assert "RestartIntensityError" in error["type"]
    assert "restart 4 within 60s (max_restarts=3)" in error["message"]


async def test_one_for_all_stops_and_restarts_every_non_temporary_sibling() -> None:
    """When a child fails under one_for_all its running siblings are cancelled (in
    reverse start order) and every non-temporary child starts again in start order; a
    temporary sibling is stopped and stays stopped."""
    f = make_app()

    @f.app.workflow
    async def sup(ctx: sw.Context) -> dict[str, sw.ChildOutcome]:
        return await ctx.supervise([
            spec(f.long_lived, "a", 100.0, id="a"),
            spec(f.flaky, "b", 1, 10.0, id="b"),
            spec(f.long_lived, "c", 100.0, id="c"),
            spec(f.long_lived, "t", 100.0, id="t", restart="temporary"),
        ], strategy="one_for_all")

    async with f.app:
        out = await f.app.run(sup, run_id="s1")
        kids = await children_of(f.app, "s1")
        recs = await records(f.app, "s1")
        events = await f.app.events("s1")
    assert [(name, status) for _, name, status in kids] == [
        ("a", RunStatus.CANCELLED), ("b", RunStatus.FAILED), ("c", RunStatus.CANCELLED),
        ("t", RunStatus.CANCELLED),
        ("a", RunStatus.COMPLETED), ("b", RunStatus.COMPLETED), ("c", RunStatus.COMPLETED)]
    assert recs[0]["restarted"] == ["a", "b", "c"]
    cancels = [json.loads(e.payload or "{}")["run_id"] for e in events
               if e.name == "stalwart.cancel_child" and e.kind == EventKind.STEP_COMPLETED]
    assert cancels == [kids[3][0], kids[2][0], kids[0][0]]  # reverse start order
    assert out["t"].status == RunStatus.CANCELLED
    assert {k: v.status for k, v in out.items() if k != "t"} == dict.fromkeys(
        "abc", RunStatus.COMPLETED)


async def test_rest_for_one_restarts_the_failed_child_and_those_started_after_it() -> None:
    """rest_for_one: a failure of the second child stops and restarts the third, and
    leaves the first alone."""
    f = make_app()

    @f.app.workflow
    async def sup(ctx: sw.Context) -> dict[str, sw.ChildOutcome]:
        return await ctx.supervise([
            spec(f.long_lived, "a", 100.0, id="a"),
            spec(f.flaky, "b", 1, 10.0, id="b"),
            spec(f.long_lived, "c", 100.0, id="c"),
        ], strategy="rest_for_one")

    async with f.app:
        await f.app.run(sup, run_id="s1")
        kids = await children_of(f.app, "s1")
        recs = await records(f.app, "s1")
    assert [(name, status) for _, name, status in kids] == [
        ("a", RunStatus.COMPLETED), ("b", RunStatus.FAILED), ("c", RunStatus.CANCELLED),
        ("b", RunStatus.COMPLETED), ("c", RunStatus.COMPLETED)]
    assert recs[0]["restarted"] == ["b", "c"]
    assert f.attempts == {"a": 1, "b": 2, "c": 2}


async def test_escalation_reaches_a_parent_supervisor_which_restarts_the_subtree() -> None:
    """A supervision tree: the inner supervisor escalates (RestartIntensityError) and
    the outer one, its parent, restarts it as a transient child."""
    f = make_app()

    @f.app.workflow
    async def inner(ctx: sw.Context) -> dict[str, sw.ChildOutcome]:
        return await ctx.supervise([spec(f.flaky, "w", 2, 5.0, id="w")], max_restarts=1)

    @f.app.workflow
    async def outer(ctx: sw.Context) -> dict[str, sw.ChildOutcome]:
        return await ctx.supervise([sw.ChildSpec(inner, id="inner", restart="transient")])

    async with f.app:
        out = await f.app.run(outer, run_id="top")
        recs = await records(f.app, "top")
        inner_runs = await children_of_any(f.app, "top")
    assert out["inner"].ok
    assert f.attempts["w"] == 3
    assert [r["child"] for r in recs] == ["inner"]
    assert "RestartIntensityError" in recs[0]["reason"]
    assert [r.status for r in inner_runs] == [RunStatus.FAILED, RunStatus.COMPLETED]


async def children_of_any(app: sw.Runtime, run_id: str) -> list[sw.RunRecord]:
    runs = await app.store.list_runs(parent_run_id=run_id, limit=1000)
    return sorted(runs, key=lambda r: r.created_at)


@pytest.mark.parametrize("after", [1.0, 50.0])
async def test_cancelling_the_supervisor_cancels_its_children(after: float) -> None:
    """A cancelled supervisor ends cancelled (not completed, though its transient child
    then ended "normally"), and so do its running children: while it waits for them in
    memory (after 1 s) and once it is parked (after 50 s)."""
    f = make_app()

    @f.app.workflow
    async def sup(ctx: sw.Context) -> dict[str, sw.ChildOutcome]:
        return await ctx.supervise([spec(f.long_lived, "a", 1000.0, id="a")])

    async with f.app:
        handle = await f.app.start(sup, run_id="s1")
        await f.app.clock.sleep(after)
        await handle.cancel()
        with pytest.raises(sw.RunCancelledError):
            await handle.result()
        kids = await children_of(f.app, "s1")
    assert [status for *_, status in kids] == [RunStatus.CANCELLED]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"strategy": "one_for_none"}, "unknown strategy 'one_for_none'"),
    ({"children": []}, "needs at least one child"),
    ({"max_restarts": -1}, "max_restarts must be an int >= 0"),
    ({"within": 0}, "within must be a positive"),
    ({"children": "dup"}, "two children have the id 'make_app.<locals>.flaky'"),
    ({"children": "restart"}, "restart type 'sometimes'"),
    ({"children": "junk"}, "is neither a ChildSpec nor a workflow"),
])
async def test_bad_input_is_one_clear_error_and_records_nothing(
        kwargs: dict[str, Any], message: str) -> None:
    """An unknown strategy, no children, a bad limit, duplicate ids or a bad restart
    type fail the supervisor with a ConfigurationError naming the problem, before any
    child starts or any step is journaled."""
    f = make_app()
    children: Any = kwargs.pop("children", [f.flaky])
    if children == "dup":
        children = [f.flaky, f.flaky]
    elif children == "restart":
        children = [sw.ChildSpec(f.flaky, restart="sometimes")]  # type: ignore[arg-type]
    elif children == "junk":
        children = ["not a workflow"]

    @f.app.workflow
    async def sup(ctx: sw.Context) -> dict[str, sw.ChildOutcome]:
        return await ctx.supervise(children, **kwargs)

    async with f.app:
        with pytest.raises(sw.RunFailedError) as caught:
            await f.app.run(sup, run_id="s1")
        events = await f.app.events("s1")
        kids = await children_of(f.app, "s1")
    assert caught.value.error_type.endswith("ConfigurationError")
    assert message in str(caught.value)
    assert kids == []
    assert [e.kind for e in events] == [EventKind.RUN_CREATED, EventKind.RUN_CLAIMED,
                                        EventKind.RUN_FAILED]


async def test_outcomes_come_in_the_order_the_children_were_given() -> None:
    """The first child ends last: the outcomes are still keyed in the given order (the
    order of ending is the machine's, and a returned dict is journaled as it is)."""
    fx = make_app()
    async with fx.app as app:
        @app.workflow
        async def lead(ctx: sw.Context) -> list[str]:
            outcomes = await ctx.supervise([
                spec(fx.flaky, "slow", 0, 30.0, id="slow"),
                spec(fx.flaky, "quick", 0, 1.0, id="quick"),
                spec(fx.flaky, "middle", 0, 10.0, id="middle")])
            return list(outcomes)

        assert await app.run(lead) == ["slow", "quick", "middle"]

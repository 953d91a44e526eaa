"""Changed code against a recorded run: live resume and ``runs replay`` agree, and a
mismatched run is refused before any new effect.

Each case records a run with the original code until it parks in ``wait_for_signal``,
then deploys a mutant of the code: ``app.replay`` (what ``stalwart runs replay`` runs)
judges it, and a live resume (the signal wakes the run) executes it. Both must name the
same step, and the resume must run no effect. A mismatched run is dead-lettered; with
the original code back, ``dlq retry`` finishes it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import stalwart as sw
from stalwart.store import EventKind

Plan = list[tuple[str, Any]]

ORIGINAL: Plan = [
    ("step", "a"),                                       # 1
    ("step", "b"),                                       # 2
    ("gather", (("x0",), ("x1",), ("x2", "y2"))),        # 3: 3/0/1, 3/1/1, 3/2/1, 3/2/2
    ("child", "sub"),                                    # 4
    ("step", "c"),                                       # 5
    ("wait", "go"),                                      # 6: the run parks here
    ("step", "d"),                                       # 7
]


def mutate(**changes: Any) -> Plan:
    """ORIGINAL with items replaced (by index), inserted (``insert=(i, item)``) or
    removed (``drop=i``)."""
    plan = list(ORIGINAL)
    if "insert" in changes:
        i, item = changes.pop("insert")
        plan.insert(i, item)
    if "drop" in changes:
        del plan[changes.pop("drop")]
    for key, item in changes.items():
        plan[int(key[1:])] = item
    return plan


MUTANTS: dict[str, tuple[Plan, str | None]] = {
    # name: (the code now, the step the divergence is blamed on; None: no divergence)
    "unchanged": (ORIGINAL, None),
    "appended": ([*ORIGINAL, ("step", "e")], None),  # after the journal: progress
    "reordered": (mutate(i0=("step", "b"), i1=("step", "a")), "1"),
    "renamed": (mutate(i0=("step", "a2")), "1"),
    "inserted": (mutate(insert=(1, ("step", "new"))), "2"),
    "removed": (mutate(drop=1), "2"),
    "gather_widened": (mutate(i2=("gather", (("x0",), ("x1",), ("x2", "y2"), ("x3",)))),
                       "3/3/1"),
    "gather_narrowed": (mutate(i2=("gather", (("x0",), ("x1",)))), "3/2/1"),
    "branch_shortened": (mutate(i2=("gather", (("x0",), ("x1",), ("x2",)))), "3/2/2"),
    "branches_swapped": (mutate(i2=("gather", (("x1",), ("x0",), ("x2", "y2")))), "3/0/1"),
    "child_changed": (mutate(i3=("child", "sub2")), "4"),
    "wait_removed": (mutate(drop=5), "6"),
    "wait_renamed": (mutate(i5=("wait", "stop")), "6"),
}


class Effects:
    """Every step's effect, in order."""

    def __init__(self) -> None:
        self.done: list[str] = []

    def __call__(self, label: str) -> str:
        self.done.append(label)
        return label


def define(app: sw.Runtime, plan: Plan, effects: Effects) -> sw.Workflow[Any, Any]:
    """The workflow ``mutable`` as ``plan`` says (with its children) on ``app``."""
    async def sub_body(ctx: sw.Context) -> str:
        return str(await ctx.step(effects, "s", name="s"))

    subs = {name: sw.Workflow(sub_body, name=name) for name in ("sub", "sub2")}

    async def branch(ctx: sw.Context, labels: tuple[str, ...]) -> list[str]:
        return [await ctx.step(effects, label, name=label) for label in labels]

    async def body(ctx: sw.Context) -> list[Any]:
        out: list[Any] = []
        for kind, arg in plan:
            if kind == "step":
                out.append(await ctx.step(effects, arg, name=arg))
            elif kind == "gather":
                out.append(await ctx.gather(*(branch(ctx, b) for b in arg)))
            elif kind == "child":
                out.append(await ctx.child(subs[arg]))
            else:
                out.append(await ctx.wait_for_signal(arg))
        return out

    for wf in subs.values():
        app.register(wf)
    return app.workflow(name="mutable")(body)  # type: ignore[no-any-return]


async def _parked(db: Path) -> tuple[str, Effects]:
    """A run of the original code, parked waiting for signal ``go`` at step 6."""
    effects = Effects()
    app = sw.Runtime(db, park_after=0)
    wf = define(app, ORIGINAL, effects)
    async with app:
        handle = await app.start(wf, run_id="m")
        for _ in range(2000):
            rec = await app.get_run("m")
            if rec.status == sw.RunStatus.WAITING and any(
                    e.kind == EventKind.SIGNAL_WAIT_STARTED for e in await app.events("m")):
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("the run never parked at its signal")
    assert sorted(effects.done) == ["a", "b", "c", "s", "x0", "x1", "x2", "y2"]
    return handle.run_id, effects


@pytest.mark.parametrize("mutant", list(MUTANTS))
async def test_live_resume_and_replay_agree_and_no_effect_runs(tmp_path: Path,
                                                                mutant: str) -> None:
    """Replay and a live resume of the mutant name the same step (or both accept it);
    a refused resume runs no effect; the original code back, dlq retry finishes it."""
    plan, blamed = MUTANTS[mutant]
    db = tmp_path / "j.db"
    run_id, _ = await _parked(db)

    replayer = sw.Runtime(db, worker=False)
    define(replayer, plan, Effects())
    async with replayer:
        report = await replayer.replay(run_id)
    assert report.deterministic == (blamed is None), report.divergences
    assert report.step_id == blamed
    if blamed is None:
        assert report.replayed == "stopped"  # at the recorded wait: not a new step

    effects = Effects()
    live = sw.Runtime(db, park_after=0)
    define(live, plan, effects)
    async with live:
        await live.signal(run_id, "go", "yes")
        rec = await live.wait_for_end(run_id, timeout=30)
        if blamed is None:
            assert rec.status == sw.RunStatus.COMPLETED
            assert effects.done == ["d", "e"][:len(plan) - len(ORIGINAL) + 1]
            return
        assert rec.status == sw.RunStatus.DEAD_LETTERED
        with pytest.raises(sw.RunFailedError) as failed:
            live.outcome(rec)
    cause = failed.value.__cause__
    assert isinstance(cause, sw.NonDeterminismError)
    assert cause.step_id == blamed == report.step_id
    assert effects.done == []  # refused before any effect of the mismatched code

    back = Effects()
    rolled_back = sw.Runtime(db, park_after=0)
    define(rolled_back, ORIGINAL, back)
    async with rolled_back:
        await rolled_back.redrive(run_id)
        done = await rolled_back.wait_for_end(run_id, timeout=30)
    assert done.status == sw.RunStatus.COMPLETED
    assert back.done == ["d"]  # the kept signal is taken at step 6; only d is new


# -- a run parked inside a gather ------------------------------------------------------


async def _events(db: Path, run_id: str) -> list[Any]:
    async with sw.Runtime(db, worker=False) as reader:
        return await reader.events(run_id)


def define_in_flight(app: sw.Runtime, effects: Effects, *, branches: int = 2,
                     rename: bool = False) -> sw.Workflow[Any, Any]:
    """``gather(branch 0: x0, wait "go", z0; branch 1: x1, y1)``: parks in branch 0."""
    async def first(ctx: sw.Context) -> list[Any]:
        return [await ctx.step(effects, "x0", name="x0"), await ctx.wait_for_signal("go"),
                await ctx.step(effects, "z0", name="z0")]

    async def second(ctx: sw.Context) -> list[Any]:
        return [await ctx.step(effects, "x1", name="x1"),
                await ctx.step(effects, "y1", name="y2" if rename else "y1")]

    async def body(ctx: sw.Context) -> list[Any]:
        return await ctx.gather(*(make(ctx) for make in (first, second)[:branches]))

    return app.workflow(name="in_flight")(body)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("mutant", "blamed"), [
    ({}, None), ({"branches": 1}, "1/1/1"), ({"rename": True}, "1/1/2")])
async def test_a_gather_narrowed_under_a_run_parked_inside_it_is_refused_at_once(
        tmp_path: Path, mutant: dict[str, Any], blamed: str | None) -> None:
    """The journal holds branch 1 of the gather the run is parked in. Code that now
    gathers one awaitable is refused at the gather, before branch 0 takes the signal and
    runs z0 (no later step would show the branch missing until the run's end)."""
    db = tmp_path / "j.db"
    original = sw.Runtime(db, park_after=0)
    wf = define_in_flight(original, Effects())
    async with original:
        await original.start(wf, run_id="g")
        for _ in range(2000):
            if (await original.get_run("g")).status == sw.RunStatus.WAITING:
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("the run never parked")

    replayer = sw.Runtime(db, worker=False)
    define_in_flight(replayer, Effects(), **mutant)
    async with replayer:
        report = await replayer.replay("g")
    assert (report.deterministic, report.step_id) == (blamed is None, blamed)

    effects = Effects()
    live = sw.Runtime(db, park_after=0)
    define_in_flight(live, effects, **mutant)
    async with live:
        await live.signal("g", "go", 1)
        rec = await live.wait_for_end("g", timeout=30)
    if blamed is None:
        assert (rec.status, effects.done) == (sw.RunStatus.COMPLETED, ["z0"])
    else:
        assert rec.status == sw.RunStatus.DEAD_LETTERED
        dead = [e for e in await _events(db, "g") if e.kind == EventKind.RUN_DEAD_LETTERED]
        assert [e.step_id for e in dead] == [blamed]
        assert effects.done == []


# -- what is not a divergence: a gather's failure cancelled a branch ---------------------


def define_cancelling(app: sw.Runtime, effects: Effects, *,
                      depth: int) -> sw.Workflow[Any, Any]:
    """``gather(on_error="cancel")``: branch 0 runs steps nested ``depth`` gathers deep,
    then a step that is still running when branch 1 fails; the workflow catches the
    failure, runs ``after`` and parks waiting for ``go``, then runs ``d``."""
    started = asyncio.Event()

    async def hang(label: str) -> str:
        effects(label)
        started.set()
        await asyncio.Event().wait()  # until cancelled
        return label

    async def fail(label: str) -> str:
        await started.wait()
        effects(label)
        raise ValueError("branch 1 fails")

    async def nest(ctx: sw.Context, level: int) -> Any:
        if level == 0:
            return await ctx.step(effects, "deep", name="deep")
        return await ctx.gather(nest(ctx, level - 1), nest(ctx, level - 1))

    async def first(ctx: sw.Context) -> Any:
        await nest(ctx, depth)
        return await ctx.step(hang, "hang", name="hang")

    async def second(ctx: sw.Context) -> Any:
        return await ctx.step(fail, "fail", name="fail")

    async def body(ctx: sw.Context) -> list[Any]:
        try:
            await ctx.gather(first(ctx), second(ctx))
        except ValueError:
            pass
        out = [await ctx.step(effects, "after", name="after")]
        out.append(await ctx.wait_for_signal("go"))
        out.append(await ctx.step(effects, "d", name="d"))
        return out

    return app.workflow(name="cancelling")(body)  # type: ignore[no-any-return]


@pytest.mark.parametrize("depth", [0, 6])
async def test_a_branch_cancelled_by_a_recorded_failure_is_no_divergence(
        tmp_path: Path, depth: int) -> None:
    """Replaying, branch 0 reaches its unrecorded step (cancelled the first time) while
    later steps are recorded, or (six gathers deep) is cancelled again before it has
    replayed its deepest steps: the recorded failure of branch 1 explains both, so the
    run goes on, and replay agrees."""
    db = tmp_path / "j.db"
    first = Effects()
    original = sw.Runtime(db, park_after=0)
    wf = define_cancelling(original, first, depth=depth)
    async with original:
        await original.start(wf, run_id="c")
        for _ in range(2000):
            if (await original.get_run("c")).status == sw.RunStatus.WAITING:
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("the run never parked")
    assert first.done[-3:] == ["hang", "fail", "after"]

    replayer = sw.Runtime(db, worker=False)
    define_cancelling(replayer, Effects(), depth=depth)
    async with replayer:
        report = await replayer.replay("c")
    assert report.deterministic, report.divergences

    effects = Effects()
    live = sw.Runtime(db, park_after=0)
    define_cancelling(live, effects, depth=depth)
    async with live:
        await live.signal("c", "go", 1)
        rec = await live.wait_for_end("c", timeout=30)
    assert rec.status == sw.RunStatus.COMPLETED, rec.error
    assert effects.done == ["d"]


async def test_replay_of_a_run_that_failed_beside_a_waiting_branch_is_deterministic(
        tmp_path: Path) -> None:
    """Branch 0 waits for a signal when branch 1 fails and fails the run: replaying it,
    the recorded wait is replayed as a wait that had not ended, not as a step the code
    now adds to a finished journal."""
    async def boom() -> None:
        raise ValueError("branch 1 fails")

    async def waiter(ctx: sw.Context) -> Any:
        return await ctx.wait_for_signal("go")

    async def body(ctx: sw.Context) -> list[Any]:
        async def failing() -> None:
            await ctx.step(boom)  # journaled after branch 0's wait (commits in order)

        return await ctx.gather(waiter(ctx), failing())

    db = tmp_path / "j.db"
    app = sw.Runtime(db, park_after=60)
    wf = app.workflow(name="failing")(body)
    async with app:
        handle = await app.start(wf, run_id="f")
        with pytest.raises(sw.RunFailedError):
            await handle.result(timeout=30)
        kinds = [e.kind for e in await app.events("f")]
        report = await app.replay("f")
    assert EventKind.SIGNAL_WAIT_STARTED in kinds
    assert (report.deterministic, report.replayed) == (True, "failed"), report.divergences


# -- the rules, on a journal's step ids alone ------------------------------------------

JOURNAL = {"1": "a", "2/0/1": "x0", "2/1/1": "x1", "2/1/2": "y1", "3": "c", "4": "d"}


@pytest.mark.parametrize(("visited", "step", "blamed", "provisional"), [
    ([], "1", None, False),                            # the first step: replayed next
    (["1", "2/0/1", "2/1/1", "2/1/2", "3", "4"], "5", None, False),  # progress
    (["1", "2/0/1", "2/1/1", "2/1/2", "3"], "5", "4", False),        # d was skipped
    (["1", "2/0/1", "2/1/1"], "2/1/3", "2/1/2", False),  # y1 skipped in its branch
    (["1", "2/0/1", "2/1/1", "2/1/2"], "2/2/1", "2/2/1", True),  # a third branch
    (["1", "2/0/1"], "2/0/2", "2/0/2", True),          # x0's branch goes on, 3 exists
    (["1"], "2", "2", False),                          # a step where a gather was
    (["1", "2/0/1", "2/1/1", "2/1/2"], "3", "3", False),  # another name at c's place
])
def test_live_steps_are_judged_by_the_journal_around_them(
        visited: list[str], step: str, blamed: str | None, provisional: bool) -> None:
    """Which new step fits the journal, which is blamed, and which divergence a
    sibling's failure could explain."""
    from stalwart.engine._determinism import History, is_provisional

    history = History("r", JOURNAL)
    for sid in visited:
        history.visit(sid)
    if step in JOURNAL:
        err = history.check_name(step, "other") if blamed else None
    else:
        err = history.check_live(step, "new")
    if blamed is None:
        assert err is None
        return
    assert err is not None
    assert (err.step_id, is_provisional(err)) == (blamed, provisional)

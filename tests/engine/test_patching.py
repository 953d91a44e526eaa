"""Changing a workflow's code under running runs with ``ctx.patched`` (Temporal's
``patched``): a run that went past the change the old way replays the old way, every
other run takes the new way, each the same on every replay, live resume and ``runs
replay`` agree; ``deprecate_patch`` retires the old way. Without the patch the same
change is refused (the control)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import stalwart as sw
from stalwart.store import EventKind

Effects = list[str]


def define(app: sw.Runtime, version: str, done: Effects) -> sw.Workflow[Any, Any]:
    """The workflow ``order`` as deployed at ``version``: v1 ``a, wait w1, b, wait w2,
    d``; v2 adds step ``c`` before ``b`` behind ``patched("add-c")`` (``bare``: the
    same change without the patch); v3 has only the new way, behind
    ``deprecate_patch``."""
    def effect(label: str) -> str:
        done.append(label)
        return label

    async def body(ctx: sw.Context) -> list[str]:
        out = [await ctx.step(effect, "a", name="a")]
        await ctx.wait_for_signal("w1")
        if version == "v2":
            if await ctx.patched("add-c"):
                out.append(await ctx.step(effect, "c", name="c"))
        elif version == "bare":
            out.append(await ctx.step(effect, "c", name="c"))
        elif version == "v3":
            ctx.deprecate_patch("add-c")
            out.append(await ctx.step(effect, "c", name="c"))
        out.append(await ctx.step(effect, "b", name="b"))
        await ctx.wait_for_signal("w2")
        out.append(await ctx.step(effect, "d", name="d"))
        return out

    return app.workflow(name="order")(body)  # type: ignore[no-any-return]


async def _parked(db: Path, version: str, run_id: str, at: str) -> None:
    """A run of ``version`` parked at its wait for signal ``at`` (``w1``: before the
    change's place; ``w2``: after it)."""
    app = sw.Runtime(db, park_after=0)
    define(app, version, [])
    async with app:
        await app.start(app.workflows["order"], run_id=run_id)
        if at == "w2":
            await app.signal(run_id, "w1", "now")
        for _ in range(2000):
            if [e.name for e in await app.events(run_id)
                    if e.kind == EventKind.SIGNAL_WAIT_STARTED][-1:] == [f"signal:{at}"]:
                return
            await asyncio.sleep(0.005)
    raise AssertionError(f"the run never parked at {at}")


async def _until_parked(app: sw.Runtime, run_id: str, timeout: float = 60.0) -> None:
    """Until ``run_id`` parked (every branch waits for its signal), bounded in real time:
    its steps run in threads and the journal's writes in another."""
    async with asyncio.timeout(timeout):
        while (await app.get_run(run_id)).status != sw.RunStatus.WAITING:
            await asyncio.sleep(0.005)


async def _finish(db: Path, version: str, run_id: str) -> tuple[sw.RunRecord, Effects,
                                                                 sw.ReplayReport]:
    """Replay ``run_id`` under ``version``'s code, then signal and finish it there."""
    done: Effects = []
    app = sw.Runtime(db, park_after=0)
    define(app, version, done)
    async with app:
        report = await app.replay(run_id)
        for name in ("w1", "w2"):
            if not any(e.name == f"signal:{name}" and e.kind == EventKind.SIGNAL_RECEIVED
                       for e in await app.events(run_id)):
                await app.signal(run_id, name, "now")
        rec = await app.wait_for_end(run_id, timeout=30)
    return rec, done, report


async def _steps(db: Path, run_id: str) -> list[str | None]:
    async with sw.Runtime(db, worker=False) as reader:
        return [e.name for e in await reader.events(run_id)
                if e.kind == EventKind.STEP_COMPLETED]


async def test_a_run_past_the_change_replays_the_old_way(tmp_path: Path) -> None:
    """A v1 run parked after the change's place; v2 deployed: replay and resume agree,
    the run goes on the old way (no c, no marker) and completes; the same change
    without the patch is refused before any effect (the control)."""
    db = tmp_path / "j.db"
    await _parked(db, "v1", "old", at="w2")
    await _parked(db, "v1", "control", at="w2")
    rec, done, report = await _finish(db, "v2", "old")
    assert rec.status == sw.RunStatus.COMPLETED and done == ["d"]
    assert report.deterministic, report.divergences
    assert await _steps(db, "old") == ["a", "b", "d"]
    rec, done, report = await _finish(db, "bare", "control")
    assert rec.status == sw.RunStatus.DEAD_LETTERED and done == []
    assert not report.deterministic and report.step_id == "3"


async def test_a_run_that_reaches_the_change_takes_the_new_way_on_every_replay(
        tmp_path: Path) -> None:
    """A v1 run parked *before* the change's place (it had not gone past it) and a run
    started under v2 both finish the new way (c, a marker step journaled); replayed
    afterwards they still go the new way."""
    db = tmp_path / "j.db"
    await _parked(db, "v1", "early", at="w1")
    await _parked(db, "v2", "new", at="w1")
    for run_id in ("early", "new"):
        rec, done, _ = await _finish(db, "v2", run_id)
        assert rec.status == sw.RunStatus.COMPLETED and done == ["c", "b", "d"]
        assert await _steps(db, run_id) == ["a", "stalwart.patch:add-c", "c", "b", "d"]
        async with sw.Runtime(db, worker=False) as replayer:
            define(replayer, "v2", [])
            report = await replayer.replay(run_id)
        assert report.deterministic and report.replayed == "completed", report.divergences


async def test_deprecate_patch_replays_runs_with_and_without_the_marker(
        tmp_path: Path) -> None:
    """v3 keeps only the new way: a run made under v2 (its marker journaled, parked
    after it) replays and completes; a run made under v3 journals no marker."""
    db = tmp_path / "j.db"
    await _parked(db, "v2", "v2-run", at="w2")
    rec, done, report = await _finish(db, "v3", "v2-run")
    assert rec.status == sw.RunStatus.COMPLETED and done == ["d"]
    assert report.deterministic, report.divergences
    await _parked(db, "v3", "v3-run", at="w1")
    rec, done, report = await _finish(db, "v3", "v3-run")
    assert rec.status == sw.RunStatus.COMPLETED and done == ["c", "b", "d"]
    assert report.deterministic
    assert await _steps(db, "v3-run") == ["a", "c", "b", "d"]


async def test_a_patch_inside_a_gather_branch(tmp_path: Path) -> None:
    """Each branch's patch is its own scope's step: one branch recorded past the change
    the old way goes on the old way while a branch at the change takes the new one."""
    db = tmp_path / "j.db"
    done: Effects = []

    def effect(label: str) -> str:
        done.append(label)
        return label

    def define_gather(app: sw.Runtime, patched: bool) -> sw.Workflow[Any, Any]:
        async def fast(ctx: sw.Context) -> list[str]:
            out = [await ctx.step(effect, "f1", name="f1")]
            if patched and await ctx.patched("extra"):
                out.append(await ctx.step(effect, "fx", name="fx"))
            return [*out, await ctx.step(effect, "f2", name="f2")]

        async def slow(ctx: sw.Context) -> list[str]:
            await ctx.wait_for_signal("go")
            if patched and await ctx.patched("extra"):
                return [await ctx.step(effect, "sx", name="sx")]
            return []

        async def body(ctx: sw.Context) -> list[list[str]]:
            return await ctx.gather(fast(ctx), slow(ctx))

        return app.workflow(name="branches")(body)  # type: ignore[no-any-return]

    app = sw.Runtime(db, park_after=0)
    define_gather(app, patched=False)
    async with app:
        await app.start(app.workflows["branches"], run_id="g")
        # Parked: the slow branch's wait began and the fast branch recorded f2 (its
        # steps run in threads: the wait can begin first, and a run closed then would
        # meet the patch before f2 and take the new way in that branch too).
        await _until_parked(app, "g")
    done.clear()
    app = sw.Runtime(db, park_after=0)
    wf = define_gather(app, patched=True)
    async with app:
        await app.signal("g", "go", "now")
        rec = await app.wait_for_end("g", timeout=30)
        assert app.outcome(rec) == [["f1", "f2"], ["sx"]]
    assert wf.name == "branches" and done == ["sx"]


async def test_bad_change_ids_and_misuse_are_refused(tmp_path: Path) -> None:
    """A change id that is not printable text of 1-200 characters: ConfigurationError;
    patched inside a step: ContextMisuseError. Nothing is journaled for them."""
    async with sw.Runtime(tmp_path / "j.db") as app:
        @app.workflow
        async def misuse(ctx: sw.Context, change_id: Any) -> str:
            try:
                await ctx.patched(change_id)
            except sw.ConfigurationError as exc:
                return f"config: {exc}"
            return "accepted"

        for bad in ("", 7, None, "a\nb", "x" * 201):
            got = await app.run(misuse, bad)
            assert got.startswith("config: a change id is printable text"), got

        @app.workflow
        async def inside(ctx: sw.Context) -> str:
            async def step() -> None:
                await ctx.patched("x")
            try:
                await ctx.step(step)
            except sw.ContextMisuseError:
                return "refused"
            return "ran"

        assert await app.run(inside) == "refused"
        runs = await app.list_runs()
        events = [e for r in runs for e in await app.events(r.run_id)]
    assert not [e for e in events if (e.name or "").startswith("stalwart.patch:")]

"""Time travel: replay a journal against current code; fork a run at a step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import stalwart as sw
from stalwart.models import ToolCallRequest


class Counters:
    def __init__(self) -> None:
        self.prep = 0
        self.lookups = 0
        self.finish = 0


def define(app: sw.Runtime, c: Counters, *, variant: str = "v1") -> Any:
    """The same workflow name, in several versions of the code."""
    def lookup(city: str) -> str:
        c.lookups += 1
        return f"{city}: 21C"

    agent = sw.Agent("weather", "sim:main", tools=[sw.Tool(lookup)])

    def prep() -> str:
        c.prep += 1
        return "prepared"

    def finish(text: str) -> str:
        c.finish += 1
        return text.upper()

    def other() -> str:
        return "other"

    @app.workflow(name="flow")
    async def flow(ctx: sw.Context) -> str:
        await ctx.step(prep)
        if variant == "renamed":
            await ctx.step(other)
        answer = await agent.run(ctx, "weather in Oslo?")
        if variant == "shorter":
            return answer
        result = str(await ctx.step(finish, answer))
        if variant == "extra":
            await ctx.step(other)
        return result

    return flow


def script() -> list[Any]:
    return [ToolCallRequest.create("c1", "lookup", {"city": "Oslo"}), "It is 21C."]


async def _recorded_run(tmp_path: Path) -> tuple[str, Counters, sw.SimulatedModel]:
    c = Counters()
    model = sw.SimulatedModel("main", script=script())
    app = sw.Runtime(tmp_path / "j.db", models={"sim:main": model})
    wf = define(app, c)
    async with app:
        h = await app.start(wf)
        assert await h.result() == "IT IS 21C."
    return h.run_id, c, model


async def test_replay_of_unchanged_code_is_deterministic_and_calls_nothing(
        tmp_path: Path) -> None:
    """Same code: every recorded step is reached, nothing runs, the journal is untouched."""
    run_id, _, _ = await _recorded_run(tmp_path)
    c = Counters()
    model = sw.SimulatedModel("main", script=[])
    app = sw.Runtime(tmp_path / "j.db", models={"sim:main": model}, worker=False)
    define(app, c)
    async with app:
        before = len(await app.events(run_id))
        report = await app.replay(run_id)
        after = len(await app.events(run_id))
    assert report.deterministic, report.divergences
    assert report.replayed == "completed" and report.recorded_status == "completed"
    assert report.steps_recorded == report.steps_replayed == 5
    assert (c.prep, c.lookups, c.finish, model.statistics().calls) == (0, 0, 0, 0)
    assert before == after


@pytest.mark.parametrize(("variant", "step", "words"), [
    ("extra", "6", "the code now calls"),
    ("renamed", "2", "is recorded as"),
    ("shorter", "5", "finishes without calling"),
])
async def test_replay_flags_a_changed_workflow(tmp_path: Path, variant: str, step: str,
                                               words: str) -> None:
    """A step added, renamed or dropped: the report says where the code diverges."""
    run_id, _, _ = await _recorded_run(tmp_path)
    c = Counters()
    model = sw.SimulatedModel("main", script=[])
    app = sw.Runtime(tmp_path / "j.db", models={"sim:main": model}, worker=False)
    define(app, c, variant=variant)
    async with app:
        report = await app.replay(run_id)
    assert not report.deterministic
    assert report.step_id == step
    assert words in report.divergences[0]
    assert (c.prep, c.lookups, c.finish, model.statistics().calls) == (0, 0, 0, 0)
    assert json.loads(json.dumps(report.as_json()))["deterministic"] is False


async def test_fork_reuses_exactly_the_prefix_and_runs_the_rest(tmp_path: Path) -> None:
    """Fork at the final model turn with another model: steps before it are replayed
    (no calls), that turn and the rest run for real, with the other model."""
    run_id, c, model = await _recorded_run(tmp_path)
    assert (c.prep, c.lookups, c.finish, model.statistics().calls) == (1, 1, 1, 2)
    c2 = Counters()
    main = sw.SimulatedModel("main", script=[])
    better = sw.SimulatedModel("better", script=["Sunny, 21C."])
    app = sw.Runtime(tmp_path / "j.db", models={"sim:main": main, "sim:better": better})
    define(app, c2)
    async with app:
        fork = await app.fork(run_id, at="4", model="sim:better")
        assert await fork.result() == "SUNNY, 21C."
        events = await app.events(fork.run_id)
        report = await app.usage(fork.run_id)
        replay = await app.replay(fork.run_id)
    assert (c2.prep, c2.lookups, c2.finish) == (0, 0, 1)
    assert main.statistics().calls == 0 and better.statistics().calls == 1
    forked = [e for e in events if e.kind == "run_forked"]
    assert len(forked) == 1 and events[1].kind == "run_forked"
    info = json.loads(forked[0].payload or "{}")
    assert info == {"origin": run_id, "at": "4", "model": "sim:better",
                    "reused": ["1", "2", "3"]}
    assert [c.key for c in report.calls if not c.reused] == ["sim:better"]
    assert report.total.calls == 1
    assert replay.deterministic


async def test_fork_without_a_model_reruns_from_the_step(tmp_path: Path) -> None:
    """Fork at the tool call: the tool runs again, the model turn before it does not."""
    run_id, _, _ = await _recorded_run(tmp_path)
    c = Counters()
    main = sw.SimulatedModel("main", script=["Still 21C."])
    app = sw.Runtime(tmp_path / "j.db", models={"sim:main": main})
    define(app, c)
    async with app:
        fork = await app.fork(run_id, at="3", run_id_for_fork="my-fork")
        assert fork.run_id == "my-fork"
        assert await fork.result() == "STILL 21C."
    assert (c.prep, c.lookups, c.finish, main.statistics().calls) == (0, 1, 1, 1)


async def test_fork_rejects_a_step_the_run_does_not_have(tmp_path: Path) -> None:
    """An unknown or malformed step id is a configuration error, and nothing is created."""
    run_id, _, _ = await _recorded_run(tmp_path)
    app = sw.Runtime(tmp_path / "j.db", worker=False)
    async with app:
        with pytest.raises(sw.ConfigurationError, match="has no step 9"):
            await app.fork(run_id, at="9")
        with pytest.raises(sw.ConfigurationError, match="not a step id"):
            await app.fork(run_id, at="x")
        assert len(await app.list_runs()) == 1


async def test_a_large_result_is_stored_once_across_runs_and_forks(tmp_path: Path) -> None:
    """A document read by two runs and copied into three forks is one blob in the
    journal (content-addressed, see stalwart.store._blobs); every run reads it back."""
    import sqlite3

    from stalwart.store._blobs import blob_key

    document = "a long document, read by every run. " * 500  # ~18,000 chars
    path = tmp_path / "j.db"
    app = sw.Runtime(path)

    def read() -> str:
        return document

    def finish(text: str) -> int:
        return len(text)

    @app.workflow(name="reader")
    async def reader(ctx: sw.Context) -> int:
        text = str(await ctx.step(read))
        return int(await ctx.step(finish, text))

    async with app:
        runs = [await app.start(reader) for _ in range(2)]
        for h in runs:
            assert await h.result() == len(document)
        forks = [await app.fork(runs[0].run_id, at="2") for _ in range(3)]
        for h in forks:
            assert await h.result() == len(document)
            assert any(e.payload is not None and document in e.payload
                       for e in await app.events(h.run_id))
    conn = sqlite3.connect(path)
    try:
        blobs = conn.execute("SELECT hash FROM blobs").fetchall()
        refs = conn.execute("SELECT COUNT(DISTINCT run_id) FROM events WHERE payload_ref "
                            "IS NOT NULL").fetchone()
    finally:
        conn.close()
    assert blobs == [(blob_key(json.dumps(document)),)]
    assert refs == (5,)

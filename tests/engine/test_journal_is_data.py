"""A journal written by someone else cannot run code here: error payloads holding a crafted
pickle (the format errors had before they were data) are read as data on every path
that reads them: replay of a failed step, a call's failed attempts, ``Runtime.outcome``.

The crafted rows are written through the Store API, as anyone who can write to a shared
journal could (a checksum of the row does not help against a writer).
"""

from __future__ import annotations

import base64
import json
import pickle
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

import stalwart as sw
from stalwart.store import EventKind, Finish, NewEvent, Owner, RunStatus, SQLiteStore

INTRUDER = Owner(id="intruder", host="elsewhere", pid=1)


def crafted_error(marker: Path, *, type_name: str = "builtins.ValueError") -> dict[str, str]:
    """An error record whose pickle, once unpickled, creates ``marker``."""

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    return {"type": type_name, "message": "declined", "traceback": "",
            "pickled": base64.b64encode(pickle.dumps(Payload())).decode()}


def test_the_crafted_pickle_does_create_the_file_when_unpickled(tmp_path: Path) -> None:
    """The payload is live: unpickling it (what the journal reader must never do) creates
    the marker, so its absence below means nothing unpickled it."""
    marker = tmp_path / "proof"
    record = crafted_error(marker)
    pickle.loads(base64.b64decode(record["pickled"])).close()
    assert marker.exists()


async def write_run(db: Path, run_id: str, workflow: str, events: list[NewEvent],
                    finish: Finish) -> None:
    """A run whose journal holds ``events``, ended by ``finish`` (PENDING: resumable)."""
    store = SQLiteStore(db)
    await store.open()
    try:
        await store.create_run(run_id=run_id, workflow=workflow, input="[]",
                               now=time.time() - 60)
        (lease,) = await store.claim(INTRUDER, now=time.time() - 60, lease_seconds=1,
                                     limit=1, run_id=run_id)
        await store.append(lease, events, now=time.time() - 59, finish=finish)
    finally:
        await store.close()


async def test_replaying_a_crafted_step_failure_runs_no_code(tmp_path: Path) -> None:
    """Resuming a run whose failed step holds a crafted pickle replays the failure from
    the record (a ValueError), and the pickle is never loaded."""
    db, marker = tmp_path / "j.db", tmp_path / "pwned"
    await write_run(db, "r1", "pay", [NewEvent(
        EventKind.STEP_FAILED, "1", "charge", json.dumps(crafted_error(marker)))],
        Finish(RunStatus.PENDING))

    def charge() -> None:
        raise AssertionError("a recorded step must not run again")

    app = sw.Runtime(db)

    @app.workflow(name="pay")
    async def pay(ctx: sw.Context) -> str:
        try:
            await ctx.step(charge, name="charge")
        except ValueError as exc:
            return f"replayed {type(exc).__name__}: {exc}"
        return "no error"

    async with app:
        assert await app.handle("r1").result() == "replayed ValueError: declined"
    assert not marker.exists()


async def test_resuming_a_call_after_crafted_failed_attempts_runs_no_code(
        tmp_path: Path) -> None:
    """A tool call's journaled failed attempts are read back without their pickles."""
    db, marker = tmp_path / "j.db", tmp_path / "pwned"
    attempt = {"candidate": 0, "attempt": 1, "at": time.time() - 59, "next": "retry",
               "retry_at": time.time() - 59, "key": "tool:lookup", "duration": 0.01,
               "error": crafted_error(marker, type_name="builtins.ConnectionError")}
    await write_run(db, "r2", "look", [NewEvent(
        EventKind.ATTEMPT_FAILED, "1", "tool:lookup", json.dumps(attempt))],
        Finish(RunStatus.PENDING))
    app = sw.Runtime(db)

    @app.tool(policy=sw.Policy(retry=sw.Retry(max_attempts=1)))
    def lookup(q: str) -> str:
        raise ConnectionError("still down")

    @app.workflow(name="look")
    async def look(ctx: sw.Context) -> str:
        return await ctx.tool(lookup, q="x")

    async with app:
        with pytest.raises(sw.RunFailedError) as info:
            await app.handle("r2").result()
    assert not marker.exists()
    exhausted = info.value.__cause__
    assert isinstance(exhausted, sw.RetryExhaustedError)
    assert [type(e).__name__ for e in exhausted.errors] == ["ConnectionError"]


@pytest.mark.parametrize("status", [RunStatus.FAILED, RunStatus.DEAD_LETTERED])
async def test_the_outcome_of_a_run_with_a_crafted_error_runs_no_code(
        tmp_path: Path, status: RunStatus) -> None:
    """handle.result() / Runtime.outcome of a run whose error holds a crafted pickle."""
    db, marker = tmp_path / "j.db", tmp_path / "pwned"
    error = json.dumps(crafted_error(marker))
    kind = (EventKind.RUN_FAILED if status == RunStatus.FAILED
            else EventKind.RUN_DEAD_LETTERED)
    await write_run(db, "r3", "pay", [NewEvent(kind, payload=error)],
                    Finish(status, error=error))
    app = sw.Runtime(db, worker=False)
    async with app:
        with pytest.raises(sw.RunFailedError) as info:
            await app.handle("r3").result()
        rec = await app.get_run("r3")
        with pytest.raises(sw.RunFailedError):
            app.outcome(rec)
    assert not marker.exists()
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value.__cause__) == "declined"


def side_effect_module(folder: Path, name: str, marker: Path) -> None:
    """A module ``name`` in ``folder`` whose import creates ``marker`` (and that defines
    a pydantic model, as the journal's reference claims)."""
    (folder / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from pydantic import BaseModel\n"
        "class Thing(BaseModel):\n"
        "    x: int\n")


def test_the_side_effect_module_does_create_the_file_when_imported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module is live: importing it creates the marker, so its absence below means
    nothing imported it."""
    marker = tmp_path / "imported"
    side_effect_module(tmp_path, "sw_probe_live", marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("sw_probe_live")
    assert marker.exists()


async def test_an_untyped_result_naming_a_module_imports_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recorded result of an untyped step that names a module (the import-path tag an
    older version wrote for pydantic models) replays as plain JSON data: the module it
    names, importable and with a side effect, is never imported."""
    db, marker = tmp_path / "j.db", tmp_path / "imported"
    side_effect_module(tmp_path, "sw_probe_journal", marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    tagged = {"__stalwart_model__": "sw_probe_journal:Thing", "data": {"x": 1}}
    await write_run(db, "r4", "fetch", [NewEvent(
        EventKind.STEP_COMPLETED, "1", "lookup", json.dumps([tagged, {"n": tagged}]))],
        Finish(RunStatus.PENDING))

    def lookup():  # type: ignore[no-untyped-def]  # untyped on purpose
        raise AssertionError("a recorded step must not run again")

    app = sw.Runtime(db)

    @app.workflow(name="fetch")
    async def fetch(ctx: sw.Context) -> object:
        return await ctx.step(lookup, name="lookup")

    async with app:
        result = await app.handle("r4").result()
    assert result == [{"x": 1}, {"n": {"x": 1}}]
    assert not marker.exists()
    assert "sw_probe_journal" not in sys.modules


async def test_an_untyped_model_result_is_its_json_data_live_and_replayed(
        tmp_path: Path) -> None:
    """An untyped step returning a pydantic model gives the workflow the model's JSON
    data on its first execution, as every replay will (nothing to import by name)."""

    class Point(BaseModel):
        x: int

    def make():  # type: ignore[no-untyped-def]  # untyped on purpose
        return Point(x=3)

    app = sw.Runtime(tmp_path / "j.db")

    @app.workflow
    async def points(ctx: sw.Context) -> object:
        got = await ctx.step(make)
        return {"live": got, "type": type(got).__name__}

    async with app:
        assert await app.run(points) == {"live": {"x": 3}, "type": "dict"}
        events = await app.events((await app.list_runs())[0].run_id)
    done = [e for e in events if e.kind == EventKind.STEP_COMPLETED]
    assert json.loads(done[0].payload or "null") == {"x": 3}

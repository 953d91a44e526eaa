"""The CLI's views read journaled errors as data: a crafted pickle in an error payload
(the format errors had before) runs nothing in ``runs show``, ``runs events``,
``dlq list/show``, ``runs replay`` or ``resume``."""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
import time
from pathlib import Path
from typing import TYPE_CHECKING

from stalwart.store import EventKind, Finish, NewEvent, Owner, RunStatus, SQLiteStore

if TYPE_CHECKING:
    from conftest import Cli, Project

MODULE = '''
import stalwart as sw

app = sw.Runtime()


def charge() -> None:
    raise AssertionError("a recorded step must not run again")


@app.workflow(name="pay")
async def pay(ctx: sw.Context) -> str:
    try:
        await ctx.step(charge, name="charge")
    except ValueError as exc:
        return f"replayed {type(exc).__name__}: {exc}"
    return "no error"
'''


def crafted(marker: Path) -> dict[str, object]:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    return {"type": "builtins.ValueError", "message": "declined", "traceback": "tb",
            "pickled": base64.b64encode(pickle.dumps(Payload())).decode()}


async def _write(db: str, marker: Path) -> None:
    store = SQLiteStore(db)
    await store.open()
    owner = Owner(id="intruder", host="elsewhere", pid=1)
    now = time.time() - 60
    error = json.dumps(crafted(marker))
    attempt = json.dumps({"candidate": 0, "attempt": 1, "at": now, "next": "fail",
                          "retry_at": None, "key": "tool:x", "duration": 0.1,
                          "error": crafted(marker)})
    try:
        for run_id, events, finish in (
            ("resumable", [NewEvent(EventKind.STEP_FAILED, "1", "charge", error)],
             Finish(RunStatus.PENDING)),
            ("dead", [NewEvent(EventKind.ATTEMPT_FAILED, "1", "tool:x", attempt),
                      NewEvent(EventKind.STEP_FAILED, "1", "tool:x", error),
                      NewEvent(EventKind.RUN_DEAD_LETTERED, "1", payload=error)],
             Finish(RunStatus.DEAD_LETTERED, error=error)),
        ):
            await store.create_run(run_id=run_id, workflow="pay", input="[]", now=now)
            (lease,) = await store.claim(owner, now=now, lease_seconds=1, limit=1,
                                         run_id=run_id)
            await store.append(lease, events, now=now + 1, finish=finish)
    finally:
        await store.close()


def test_views_and_replay_of_crafted_errors_run_no_code(project: Project, cli: Cli) -> None:
    """Every command that reads the crafted rows shows the error's record and the marker
    file that unpickling would create never appears."""
    (project.dir / "paymod.py").write_text(MODULE)
    marker = project.dir / "pwned"
    asyncio.run(_write(project.store, marker))
    st = ["--store", project.store]
    shown = cli("runs", "show", "dead", *st)
    assert shown.exit_code == 0, shown.output
    assert "ValueError: declined" in shown.output
    as_json = cli("runs", "show", "dead", "--json", *st)
    assert as_json.exit_code == 0, as_json.output
    error = json.loads(as_json.stdout)["error"]
    assert error["type"] == "builtins.ValueError" and "pickled" not in error
    for args in (("runs", "events", "dead"), ("dlq", "list"), ("dlq", "show", "dead"),
                 ("dlq", "show", "dead", "--json"), ("runs", "list")):
        result = cli(*args, *st)
        assert result.exit_code == 0, (args, result.output)
    replay = cli("runs", "replay", "resumable", "--import", "paymod", *st)
    assert replay.exit_code in (0, 1), replay.output  # diverges or not: it read the row
    resumed = cli("resume", "resumable", "--import", "paymod", *st)
    assert resumed.exit_code == 0, resumed.output
    assert "replayed ValueError: declined" in resumed.output
    assert not marker.exists()

"""A blackboard wait under SIGKILL, on SQLite and PostgreSQL, with real processes: a
waiter killed after it watched the board and began to wait is woken, once resumed in a
new process, by the post made while it was dead (its poll is an hour)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

import stalwart as sw
from stalwart.errors import NotAStalwartStoreError
from stalwart.store import EventKind

from .conftest import Child

pytestmark = pytest.mark.slow


async def _poster(ctx: sw.Context) -> None:
    await sw.Blackboard("crash").post(ctx, "go:1", "the job")


poster = sw.Workflow(_poster, name="crash_board_poster")


async def events(store: str, run_id: str) -> list[Any]:
    app = sw.Runtime(store, worker=False)
    try:
        return await app.events(run_id)
    except (sw.RunNotFoundError, NotAStalwartStoreError):
        return []  # the waiter's process has not made its run (or the journal) yet
    finally:
        await app.close()


async def post_and_look(store: str) -> list[Any]:
    """Post the match from another runtime (the waiter's process is dead); the
    watches of the board then (the dead waiter's is still there)."""
    app = sw.Runtime(store, poll_interval=0.05)
    app.register(poster)
    try:
        await app.run(poster)
        return await app.store.board_watches("crash")  # type: ignore[attr-defined, no-any-return]
    finally:
        await app.close()


def test_a_waiter_killed_while_waiting_is_woken_by_a_post_made_while_it_was_dead(
        child: Child) -> None:
    """SIGKILL after the watch and the first look, while waiting; a post from another
    process; the waiter's next process resumes it and takes the entry at once: one
    watch step in its journal, the watch dropped, the signal taken."""
    proc = child.spawn("board_wait", "w")
    deadline = time.monotonic() + 60  # real processes: bounded
    while not any(e.kind == EventKind.SIGNAL_WAIT_STARTED
                  for e in asyncio.run(events(child.store, "w"))):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the waiter never began to wait"
        time.sleep(0.05)
    Child.kill(proc)
    watching = asyncio.run(post_and_look(child.store))
    assert [w.run_id for w in watching] == ["w"]
    rc, out, err = child.run("board_wait", "w", timeout=60)
    assert rc == 0, err
    assert json.loads(out) == {"key": "go:1", "value": "the job"}
    journal = asyncio.run(events(child.store, "w"))
    names = [e.name for e in journal if e.kind == EventKind.STEP_COMPLETED]
    assert names.count("board:crash:watch") == 1
    assert [e.name for e in journal if e.kind == EventKind.SIGNAL_RECEIVED] == [
        "board:crash:3"]  # the watch is step 3 (after now and the change's marker)

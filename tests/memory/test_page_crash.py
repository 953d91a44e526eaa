"""A process SIGKILLed inside a page step, after its write to warm memory and before
the step's completion is journaled: the next process resumes the run, the page step
runs again and writes nothing twice, and the window decides the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import stalwart as sw

pytestmark = pytest.mark.slow

APP = Path(__file__).with_name("page_crash_app.py")
FACT = "The vault code is 7341."


def child(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(APP), str(db), *args], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


async def test_a_kill_after_the_page_write_resumes_without_writing_twice(tmp_path: Path,
                                                                        ) -> None:
    """Killed after the first page's entry is written: resumed, the run finishes with
    the fact recalled; every memory entry is at version 1 (posted once), the killed
    step's entry is among the page keys, and each page decision is journaled once."""
    db = tmp_path / "j.db"
    killed = child(db, "crash")
    assert killed.returncode == -9, killed.stderr
    store = sw.SQLiteStore(db)  # a store, not a runtime: a runtime would recover r1
    await store.open()
    try:
        written = await store.board_entries("memory:memory", prefix="reader/")
        events = await store.load_events("r1")
    finally:
        await store.close()
    assert len(written) == 1  # the write landed; its step did not complete
    assert not any(e.name == "memory:reader/page" and e.kind == "step_completed"
                   for e in events)
    done = child(db)
    assert done.returncode == 0, done.stderr
    assert FACT in json.loads(done.stdout.strip().splitlines()[-1])
    store = sw.SQLiteStore(db)
    await store.open()
    try:
        entries = await store.board_entries("memory:memory", prefix="reader/")
        events = await store.load_events("r1")
    finally:
        await store.close()
    notes = [json.loads(e.payload or "{}") for e in events if e.kind == "context_window"]
    keys = [k for n in notes for k in n["keys"]]
    assert len(keys) == len(set(keys)) == len(entries) > 1
    assert {e.key for e in entries} == set(keys)
    assert written[0].key in keys
    assert all(e.version == 1 for e in entries)
    pages = [e for e in events if e.name == "memory:reader/page"
             and e.kind == "step_completed"]
    assert len(pages) == len(notes)

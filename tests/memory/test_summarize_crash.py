"""A process SIGKILLed around a Summarize step (issue 19: "crash mid-summarization
resumes without re-summarizing"): killed while the summarizer is answering, the resumed
run summarizes that span again (the step never completed); killed after the summary's
completion is journaled, while the next model turn is in flight, it never summarizes
again. Either way each summary step completes once, each decision is journaled once,
and the run ends as an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import stalwart as sw
from stalwart.store import Event

pytestmark = pytest.mark.slow

APP = Path(__file__).with_name("summarize_crash_app.py")
SUMMARY_STEP = "chat:reader/summary"


def argv(db: Path, state: Path, *gate: str) -> list[str]:
    return [sys.executable, str(APP), str(db), str(state), *gate]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def run_to_end(db: Path, state: Path) -> str:
    done = subprocess.run(argv(db, state), capture_output=True, text=True, timeout=120,
                          check=False, env=env())
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout.strip().splitlines()[-1]))


def kill_at_gate(db: Path, state: Path, gate: str) -> None:
    """Start the app with ``gate`` and SIGKILL it once it says it stopped there."""
    with (state / "child.err").open("w") as err:
        child = subprocess.Popen(argv(db, state, gate), env=env(),
                                 stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 60
            while not (state / "gated").exists():
                assert child.poll() is None, (state / "child.err").read_text()
                assert time.monotonic() < deadline, "the child never reached its gate"
                time.sleep(0.02)  # the child writes the file: no event crosses processes
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
    assert child.returncode == -9


async def journal(db: Path) -> list[Event]:
    store = sw.SQLiteStore(db)  # a store, not a runtime: a runtime would recover r1
    await store.open()
    try:
        return await store.load_events("r1")
    finally:
        await store.close()


def summaries_completed(events: list[Event]) -> list[str]:
    return [e.step_id or "" for e in events
            if e.name == SUMMARY_STEP and e.kind == "step_completed"]


def decisions(events: list[Event]) -> list[tuple[str | None, dict[str, Any]]]:
    return [(e.step_id, json.loads(e.payload or "{}")) for e in events
            if e.kind == "context_window"]


def summarizer_calls(state: Path) -> list[str]:
    return (state / "summaries.jsonl").read_text().splitlines()


@pytest.fixture
async def uninterrupted(tmp_path: Path) -> dict[str, Any]:
    """The same run, never killed: what a resumed one must end as."""
    state = tmp_path / "uninterrupted"
    state.mkdir()
    db = state / "j.db"
    answer = run_to_end(db, state)
    events = await journal(db)
    return {"answer": answer, "calls": summarizer_calls(state),
            "decisions": decisions(events), "summaries": summaries_completed(events),
            "final": json.loads((state / "final.json").read_text())}


def state_dir(tmp_path: Path) -> tuple[Path, Path]:
    state = tmp_path / "crashed"
    state.mkdir()
    return state / "j.db", state


async def assert_ends_as(db: Path, state: Path, clean: dict[str, Any]) -> None:
    assert run_to_end(db, state) == clean["answer"]
    events = await journal(db)
    done = summaries_completed(events)
    assert len(done) == len(set(done))  # each summary step completed once
    assert done == clean["summaries"]
    notes = decisions(events)
    assert notes == clean["decisions"]  # the same window decisions, each journaled once
    assert {n["action"] for _, n in notes} == {"summarize"}
    assert len(notes) == len(done)  # one summarize decision per summary step
    assert json.loads((state / "final.json").read_text()) == clean["final"]


async def test_killed_while_summarizing_summarizes_that_span_again(
        tmp_path: Path, uninterrupted: dict[str, Any]) -> None:
    """SIGKILLed while the summarizer answers: nothing of the summary is journaled; the
    resumed run asks the summarizer for that span once more and ends as an
    uninterrupted run."""
    db, state = state_dir(tmp_path)
    kill_at_gate(db, state, "summary")
    killed = await journal(db)
    assert summaries_completed(killed) == [] and decisions(killed) == []
    assert summarizer_calls(state) == uninterrupted["calls"][:1]
    await assert_ends_as(db, state, uninterrupted)
    # The interrupted summary ran again, once; every other one ran once.
    assert summarizer_calls(state) == uninterrupted["calls"][:1] + uninterrupted["calls"]


async def test_killed_after_the_summary_is_journaled_never_summarizes_again(
        tmp_path: Path, uninterrupted: dict[str, Any]) -> None:
    """SIGKILLed after the summary step completed and its decision was journaled, while
    the next model turn is in flight: the resumed run reads the summary from the journal
    (the summarizer is not asked again) and ends as an uninterrupted run."""
    db, state = state_dir(tmp_path)
    kill_at_gate(db, state, "turn")
    killed = await journal(db)
    assert summaries_completed(killed) == uninterrupted["summaries"][:1]
    assert decisions(killed) == uninterrupted["decisions"][:1]
    assert summarizer_calls(state) == uninterrupted["calls"][:1]
    await assert_ends_as(db, state, uninterrupted)
    assert summarizer_calls(state) == uninterrupted["calls"]  # none run twice

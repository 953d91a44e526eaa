"""Reading a journal as a story: step durations, executions and crash-resume."""

from __future__ import annotations

import json

from stalwart.cli._timeline import read_story
from stalwart.store import Event, EventKind, RunRecord, RunStatus


def _record(status: RunStatus = RunStatus.COMPLETED) -> RunRecord:
    return RunRecord(
        run_id="r", workflow="wf", workflow_ref="m:wf", status=status, input="{}",
        result="1", error=None, parent_run_id=None, parent_step_id=None, created_at=0.0,
        updated_at=13.0, wake_at=None, lease_owner=None, lease_token=3,
        lease_expires_at=None, owner_host="h", owner_pid=11, cancel_requested=False)


def _journal(*rows: tuple[float, EventKind, str | None, str | None, str | None]) -> list[Event]:
    return [Event("r", i + 1, kind, step, name, payload, at)
            for i, (at, kind, step, name, payload) in enumerate(rows)]


def _claim(at: float, pid: int) -> tuple[float, EventKind, None, str, str]:
    return (at, EventKind.RUN_CLAIMED, None, f"owner{pid}",
            json.dumps({"host": "h", "pid": pid}))


def _timed(at: float, step: str, name: str, started: float,
           kind: EventKind = EventKind.STEP_TIMED) -> tuple[float, EventKind, str, str, str]:
    return (at, kind, step, name, json.dumps({"started_at": started,
                                              "duration": at - started}))


JOURNAL = _journal(
    (0.0, EventKind.RUN_CREATED, None, "wf", "{}"),
    _claim(1.0, 10),
    _timed(2.0, "1", "plan", 1.25),
    (2.0, EventKind.STEP_COMPLETED, "1", "plan", "[1, 2]"),
    (3.0, EventKind.STEP_COMPLETED, "2/1/1", "research", '"b"'),
    _timed(5.0, "2/0/1", "research", 2.5),
    (5.0, EventKind.STEP_COMPLETED, "2/0/1", "research", '"a"'),
    (6.0, EventKind.STEP_COMPLETED, "2/0/2", "check", "true"),
    (6.5, EventKind.TIMER_STARTED, "3", "stalwart.sleep", '{"wake_at": 10.0, "seconds": 3.5}'),
    (6.5, EventKind.RUN_SUSPENDED, None, "sleeping", "10.0"),
    _claim(10.0, 10),
    _claim(12.0, 11),
    _timed(13.0, "4", "tool:publish", 12.5, EventKind.CALL_TIMED),
    (13.0, EventKind.STEP_COMPLETED, "4", "tool:publish", '{"ok": true}'),
    (13.0, EventKind.RUN_COMPLETED, None, None, "1"),
)


def test_a_steps_time_is_read_from_its_journal() -> None:
    """A step starts when its timing record (``step_timed``, ``call_timed``) or its own
    start event says; a plain step with no timing record took under 2 ms (it ends where
    it starts, ``under`` says so), not from its predecessor's end to its own."""
    story = read_story(_record(), JOURNAL, now=100.0)
    got = {s.step_id: (s.started_at, s.ended_at, s.outcome, s.under) for s in story.steps}
    assert got == {
        "1": (1.25, 2.0, "completed", None),
        "2/0/1": (2.5, 5.0, "completed", None),
        "2/0/2": (6.0, 6.0, "completed", 0.002),
        "2/1/1": (3.0, 3.0, "completed", 0.002),
        "3": (6.5, 10.0, "slept", None),
        "4": (12.5, 13.0, "completed", None),
    }
    assert [s.step_id for s in story.steps] == ["1", "2/0/1", "2/0/2", "2/1/1", "3", "4"]


def test_a_step_without_an_outcome_starts_after_the_step_before_it() -> None:
    """Only a step still running (or cut short) has its start inferred: after the step
    before it in its scope, not before the execution that records it claimed the run."""
    journal = _journal(
        _claim(0.0, 1),
        (1.0, EventKind.STEP_COMPLETED, "1", "plan", "1"),
        (2.0, EventKind.ATTEMPT_FAILED, "2", "tool:t", json.dumps({"key": "tool:t"})),
    )
    (_, second) = read_story(_record(RunStatus.RUNNING), journal, now=5.0).steps
    assert (second.outcome, second.started_at, second.ended_at) == ("running", 1.0, None)


def test_an_execution_without_an_end_event_was_cut_short() -> None:
    """Claim #2 never parked or finished before claim #3: a crash, taken over; each
    step shows the execution that recorded its outcome."""
    story = read_story(_record(), JOURNAL, now=100.0)
    assert [(e.number, e.pid, e.ended, e.followed) for e in story.executions] == [
        (1, 10, "parked (sleeping)", True), (2, 10, "interrupted", True),
        (3, 11, "completed", False)]
    assert story.crashes == 1
    assert [s.execution for s in story.steps] == [1, 1, 1, 1, 1, 3]


def test_a_run_handed_back_ended_its_execution_and_the_last_one_is_not_followed() -> None:
    """``run_released`` (Ctrl-C, a shutdown) ends an execution as handed back, not cut
    short; with no later claim nobody took the run over (yet)."""
    journal = _journal(
        _claim(0.0, 1),
        (1.0, EventKind.STEP_COMPLETED, "1", "plan", "1"),
        (1.5, EventKind.RUN_RELEASED, None, "shutdown", None),
    )
    story = read_story(_record(RunStatus.PENDING), journal, now=5.0)
    assert [(e.ended, e.followed) for e in story.executions] == [
        ("handed back (shutdown)", False)]
    assert story.crashes == 0


def test_a_live_execution_is_running_and_a_pending_sleep_is_sleeping() -> None:
    """The last claim of a running run is running; a timer not yet due is sleeping."""
    journal = JOURNAL[:9]  # up to the timer's start
    story = read_story(_record(RunStatus.RUNNING), journal, now=8.0)
    assert [e.ended for e in story.executions] == ["running"]
    assert story.steps[-1].outcome == "sleeping" and story.steps[-1].ended_at is None
    assert story.crashes == 0


def test_failed_steps_signals_and_children_are_described() -> None:
    """A failure shows its type and message; a signal its payload; a child its run id."""
    error = json.dumps({"type": "builtins.ValueError", "message": "bad", "traceback": ""})
    journal = _journal(
        _claim(0.0, 1),
        _timed(1.0, "1", "fetch", 0.0),
        (1.0, EventKind.STEP_FAILED, "1", "fetch", error),
        (1.5, EventKind.SIGNAL_WAIT_STARTED, "2", "signal:go", '{"deadline": null}'),
        (4.0, EventKind.SIGNAL_RECEIVED, "2", "go", '{"x": 1}'),
        (4.5, EventKind.CHILD_STARTED, "3", "child:sub", "r/3"),
        (6.0, EventKind.STEP_COMPLETED, "3", "child:sub", "7"),
    )
    steps = read_story(_record(RunStatus.RUNNING), journal, now=10.0).steps
    assert [(s.kind, s.outcome, s.detail, s.duration) for s in steps] == [
        ("step", "failed", "builtins.ValueError: bad", 1.0),
        ("signal", "received", '{"x": 1}', 2.5),
        ("child", "completed", "r/3", 1.5),
    ]


def test_the_step_that_ended_a_run_is_failed_and_a_redrive_is_not_a_crash() -> None:
    """``run_dead_lettered`` names the step that ended the run, but it is not the step's
    outcome; a dead-lettered execution ended (it was not cut short), and the step sent
    through again by a redrive shows the execution that ran it again (#2, not #1) and
    the time of its attempts there."""
    error = json.dumps({"type": "stalwart.errors.RetryExhaustedError", "message": "over"})

    def attempt(at: float, took: float) -> tuple[float, EventKind, str, str, str]:
        return (at, EventKind.ATTEMPT_FAILED, "2", "tool:t", json.dumps(
            {"key": "tool:t", "at": at, "duration": took, "next": "fail",
             "error": json.loads(error)}))

    journal = _journal(
        _claim(0.0, 1),
        _timed(1.0, "1", "chat:a", 0.0, EventKind.CALL_TIMED),
        (1.0, EventKind.STEP_COMPLETED, "1", "chat:a", "{}"),
        attempt(1.5, 0.5),
        (1.5, EventKind.STEP_FAILED, "2", "tool:t", error),
        (1.5, EventKind.RUN_DEAD_LETTERED, "2", None, error),
        (200.0, EventKind.RUN_REDRIVEN, "2", None, None),
        _claim(200.0, 2),
        attempt(200.25, 0.125),
        (200.25, EventKind.STEP_FAILED, "2", "tool:t", error),
        (200.25, EventKind.RUN_DEAD_LETTERED, "2", None, error),
    )
    story = read_story(_record(RunStatus.DEAD_LETTERED), journal, now=300.0)
    assert [(e.number, e.ended) for e in story.executions] == [
        (1, "dead_lettered"), (2, "dead_lettered")]
    assert story.crashes == 0
    assert [(s.step_id, s.outcome, s.duration, s.execution) for s in story.steps] == [
        ("1", "completed", 1.0, 1), ("2", "failed", 0.125, 2)]


def test_a_step_with_attempts_and_no_outcome_is_not_completed() -> None:
    """Failed attempts, then the process died: the step was interrupted (running while
    the run is), not completed."""
    attempt = json.dumps({"key": "tool:t", "error": {"type": "builtins.OSError",
                                                     "message": "reset"}})
    journal = _journal(
        _claim(0.0, 1),
        (1.0, EventKind.ATTEMPT_FAILED, "1", "tool:t", attempt),
    )
    for status, outcome in ((RunStatus.PENDING, "interrupted"),
                            (RunStatus.RUNNING, "running")):
        (step,) = read_story(_record(status), journal, now=5.0).steps
        assert (step.outcome, step.ended_at, step.detail) == (
            outcome, None, "builtins.OSError: reset")


def test_a_forks_reused_steps_take_no_time_at_its_start() -> None:
    """A fork's journal copies its origin's events for the reused steps, with the
    origin's times; in the fork they start and end at its creation."""
    rec = _record()
    fork = RunRecord(**{**{f: getattr(rec, f) for f in rec.__dataclass_fields__},
                        "created_at": 100.0, "updated_at": 103.0})
    journal = _journal(
        (100.0, EventKind.RUN_CREATED, None, "wf", "{}"),
        _timed(2.0, "1", "plan", 1.0),  # copied from the origin
        (2.0, EventKind.STEP_COMPLETED, "1", "plan", "1"),
        _claim(101.0, 5),
        _timed(103.0, "2", "act", 101.5),
        (103.0, EventKind.STEP_COMPLETED, "2", "act", "2"),
    )
    story = read_story(fork, journal, now=200.0)
    assert [(s.step_id, s.started_at, s.ended_at) for s in story.steps] == [
        ("1", 100.0, 100.0), ("2", 101.5, 103.0)]
    # Reused, not executed: no execution number (it showed #0).
    assert [(s.execution, s.reused) for s in story.steps] == [(None, True), (1, False)]

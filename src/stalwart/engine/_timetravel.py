"""Time travel from the event log: replay a run against today's code, fork it.

**Replay** (Temporal's replayer): the current workflow code runs against a recorded
journal with nothing external allowed — every step must come from the journal. The
execution writes only to a throwaway in-memory store, and a step the journal does not
have parks its branch instead of running. Divergences are found by the detector a live
resume uses (:mod:`stalwart.engine._determinism`), so ``runs replay`` and a resume agree on
every change of code. The report says whether the code still makes the same steps in the
same order and reaches the same outcome; a run that had not ended may stop where its
journal stops (a recorded wait that had not ended is such a stop, not a new step).

**Fork**: a new run of the same workflow and input whose journal starts with the
origin's recorded outcomes of every step *before* the fork step (in step-id order, so a
``gather``'s earlier branches count as before), copied in the same transaction that
creates the run. Executing it replays that prefix — nothing external is called for it —
and runs the rest for real, optionally with another model for agent turns at and after
the fork step. The fork's journal opens with ``run_forked`` (origin, step, model, the
steps it reused), which ``stalwart runs show`` prints.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, final

from ..errors import ConfigurationError
from ..store._base import (
    TERMINAL_STATUSES,
    Event,
    EventKind,
    NewEvent,
    Owner,
    RunRecord,
    RunStatus,
)
from ..store._memory import MemoryStore
from ._determinism import step_path
from ._engine import Engine
from ._execution import Execution

__all__ = ["ForkInfo", "ReplayReport", "fork_info", "fork_run", "replay_run"]

_STEP_ID = re.compile(r"^[0-9]+(/[0-9]+)*$")
_COPIED = frozenset({
    EventKind.STEP_COMPLETED, EventKind.STEP_FAILED, EventKind.ATTEMPT_FAILED,
    EventKind.TIMER_STARTED, EventKind.SIGNAL_WAIT_STARTED, EventKind.SIGNAL_RECEIVED,
    EventKind.SIGNAL_TIMED_OUT, EventKind.CHILD_STARTED, EventKind.CALL_TIMED,
    EventKind.CHECK_FAILED, EventKind.STEP_TIMED, EventKind.TOOL_CALL_REPAIRED,
    EventKind.TOOL_CALL_REFUSED, EventKind.TOOL_CALL_APPROVAL, EventKind.CONTEXT_ORIGINS,
    EventKind.CONTEXT_WINDOW,
})
_SETTLED = frozenset({EventKind.STEP_COMPLETED, EventKind.STEP_FAILED,
                      EventKind.SIGNAL_RECEIVED, EventKind.SIGNAL_TIMED_OUT})


@final
@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What replaying a recorded run with the current code found.

    Attributes:
        run_id, workflow: the run replayed.
        recorded_status: the run's status in the journal.
        replayed: how the replay ended: ``completed``, ``failed``, ``stopped`` (at the
            journal's end, or at a step it lacks) or ``cancelled``.
        deterministic: the code made the recorded steps, in order, and reached the
            recorded outcome.
        steps_recorded, steps_replayed: step ids in the journal, and how many the code
            reached.
        divergences: what differs, first first (empty when deterministic).
        step_id: where the first divergence is, when it is at a step.
    """

    run_id: str
    workflow: str
    recorded_status: str
    replayed: str
    deterministic: bool
    steps_recorded: int
    steps_replayed: int
    divergences: tuple[str, ...] = ()
    step_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"divergences": list(self.divergences)}


async def replay_run(engine: Engine, run_id: str,
                     make_context: Callable[[Execution], object]) -> ReplayReport:
    """Replay ``run_id``'s journal with the workflow code registered now (each execution
    gets its context from ``make_context``); see the module docstring. Nothing is
    written to the runtime's store and no step runs."""
    rec = await engine.read_run(run_id)
    wf = engine.resolve(rec.workflow)
    events = await engine.store.load_events(run_id)
    scratch = MemoryStore()
    await scratch.create_run(run_id=rec.run_id, workflow=rec.workflow, input=rec.input,
                             now=rec.created_at, workflow_ref=rec.workflow_ref)
    leases = await scratch.claim(Owner("replay", "replay", 0), now=engine.clock.now(),
                                 lease_seconds=1e9, limit=1, run_id=rec.run_id)
    ex = Execution(engine, leases[0], dataclasses.replace(rec, cancel_requested=False), wf,
                   events, store=scratch, replay_only=True)
    # Its own task: the execution sets context variables that must not leak to the caller.
    status = await asyncio.create_task(ex.execute(make_context(ex)))
    after = await scratch.get_run(rec.run_id)
    assert after is not None
    # The execution asked the same detector a live resume asks (stalwart.engine._determinism):
    # a divergence ended it with NonDeterminismError, before the step it concerns.
    error = json.loads(after.error) if after.error else {}
    problems, where = _divergence(rec, ex, error)
    replayed = {RunStatus.COMPLETED: "completed", RunStatus.CANCELLED: "cancelled"}.get(
        status or after.status, "failed" if after.status in TERMINAL_STATUSES else "stopped")
    if not problems:
        problems = _other_outcome(rec, after, replayed, error)
    return ReplayReport(run_id=rec.run_id, workflow=rec.workflow,
                        recorded_status=str(rec.status), replayed=replayed,
                        deterministic=not problems, steps_recorded=len(ex.recorded),
                        steps_replayed=len(ex.history.visited) if ex.history else 0,
                        divergences=tuple(problems), step_id=where)


def _divergence(rec: RunRecord, ex: Execution,
                error: dict[str, Any]) -> tuple[list[str], str | None]:
    """What the replay found different in the steps, and at which step."""
    if str(error.get("type", "")).endswith("NonDeterminismError"):
        return [str(error.get("message", ""))], _step_in(error)
    ended = rec.status in TERMINAL_STATUSES and rec.status != RunStatus.CANCELLED
    if ex.unrecorded and ended:
        # Past the end of a journal that is complete: the code wants more than the run
        # did (on a run still going, that is where it would go on).
        sid, name = min(ex.unrecorded, key=lambda s: step_path(s[0]))
        return [f"the code now calls {name!r} at step {sid}, which the journal "
                "does not have"], sid
    return [], None


def _other_outcome(rec: RunRecord, after: RunRecord, replayed: str,
                   error: dict[str, Any]) -> list[str]:
    """Where the replay's outcome differs from the recorded one (same steps)."""
    if rec.status == RunStatus.COMPLETED:
        if replayed != "completed":
            return [f"the run completed, but replaying it {replayed}"
                    + (f": {error.get('type')}: {error.get('message')}" if error else "")]
        if after.result != rec.result:
            return [f"the result differs: recorded {rec.result}, replayed {after.result}"]
    elif rec.status in (RunStatus.FAILED, RunStatus.DEAD_LETTERED):
        recorded_error = json.loads(rec.error or "{}")
        if replayed != "failed":
            return [f"the run {rec.status}, but replaying it {replayed}"]
        if recorded_error.get("type") != error.get("type"):
            return [f"the run failed with {recorded_error.get('type')}, the replay with "
                    f"{error.get('type')}"]
    return []


def _step_in(error: dict[str, Any]) -> str | None:
    match = re.search(r"step ([0-9/]+)", str(error.get("message", "")))
    return match.group(1) if match else None


# -- forks -------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class ForkInfo:
    """Where a forked run came from (its ``run_forked`` event)."""

    origin: str
    at: str
    model: str | None
    reused: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "at": self.at, "model": self.model,
                "reused": list(self.reused)}


def fork_info(events: list[Event]) -> ForkInfo | None:
    """The fork origin recorded in a journal, or ``None`` for a run that is no fork."""
    for ev in events[:2]:
        if ev.kind == EventKind.RUN_FORKED:
            d = json.loads(ev.payload or "{}")
            return ForkInfo(origin=str(d.get("origin")), at=str(d.get("at")),
                            model=d.get("model"), reused=tuple(d.get("reused", ())))
    return None


async def fork_run(engine: Engine, run_id: str, *, at: str, model: str | None = None,
                   new_run_id: str | None = None) -> str:
    """Start a fork of ``run_id`` at step ``at``; see the module docstring.

    Raises:
        RunNotFoundError: no run ``run_id``.
        ConfigurationError: ``at`` is not a step id of that run's journal, or
            ``new_run_id`` is taken.
    """
    if not _STEP_ID.match(at):
        raise ConfigurationError(f"{at!r} is not a step id (like 3 or 4/0/2)")
    rec = await engine.read_run(run_id)
    events = await engine.store.load_events(run_id)
    by_step: dict[str, list[Event]] = {}
    for ev in events:
        if ev.step_id is not None and ev.kind in _COPIED:
            by_step.setdefault(ev.step_id, []).append(ev)
    if not any(s == at or s.startswith(at + "/") for s in by_step):
        raise ConfigurationError(f"run {run_id} has no step {at} (see stalwart runs show "
                                 f"{run_id})")
    if model is not None:
        engine.model(model)  # a bad spec fails now, not in the middle of the fork
    limit = step_path(at)
    reused = sorted((sid for sid, evs in by_step.items()
                     if step_path(sid) < limit and _settled(evs)), key=step_path)
    keep = set(reused)
    copied = [NewEvent(ev.kind, ev.step_id, ev.name, ev.payload)
              for ev in events if ev.step_id in keep and ev.kind in _COPIED]
    marker = NewEvent(EventKind.RUN_FORKED, payload=json.dumps(
        {"origin": run_id, "at": at, "model": model, "reused": reused}))
    rid = new_run_id or f"{run_id}.fork-{uuid.uuid4().hex[:6]}"
    _, created = await engine.store.create_run(
        run_id=rid, workflow=rec.workflow, input=rec.input, now=engine.clock.now(),
        workflow_ref=rec.workflow_ref, events=[marker, *copied])
    if not created:
        raise ConfigurationError(f"run id {rid!r} is already taken")
    engine.poke()
    return rid


def _settled(evs: list[Event]) -> bool:
    return evs[0].kind == EventKind.TIMER_STARTED or any(e.kind in _SETTLED for e in evs)

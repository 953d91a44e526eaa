"""Child runs held by a handle: start one without waiting, wait for the first of several
to end, cancel one. The engine half of :meth:`Context.start_child`,
:meth:`Context.wait_any` and :meth:`Context.cancel_child`, on which supervision trees
(:mod:`stalwart.engine._supervisor`) are built.

``ctx.child`` starts a child run and waits for it in one step. A supervisor needs the
two apart, and a choice the journal keeps: *which* of its children ended first. Each of
these is one journaled step, so a replay takes the same branch:

* ``child:{workflow}`` (``ctx.child``) starts a child and waits for it in one step;
* ``start:{workflow}`` journals the child's start and its handle in the transaction that
  creates the child run (the child's id is ``{run_id}/{step_id}``, so a step that runs
  again after a crash finds the same child, never a second one);
* ``stalwart.wait_any`` records the first child (lowest index) found ended, and how it
  ended; until one has, the run waits like ``ctx.child`` does (a child's end wakes it, a
  long wait parks it);
* ``stalwart.cancel_child`` requests the child's cancel (and its children's) and records
  how the child ended once it has: cancelled, or what it had done before the request
  reached it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, final

from .._serde import ErrorInfo, decode
from ..errors import Cancelled, ConfigurationError, RunCancelledError, RunFailedError
from ..store._base import TERMINAL_STATUSES, Event, EventKind, NewEvent, RunRecord, RunStatus
from ._execution import Execution
from ._steps import begin, record_failure, recorded_outcome, replayed
from ._workflow import Workflow

__all__ = ["ChildOutcome", "ChildRun", "cancel_child", "child", "start_child", "wait_any"]


@final
@dataclass(frozen=True, slots=True)
class ChildRun:
    """A child run started with :meth:`Context.start_child` (a handle, in the journal).

    Attributes:
        run_id: the child's run id (``{parent_run_id}/{step_id}``).
        step_id: the parent's step that started it.
        workflow: the child's workflow name.
    """

    run_id: str
    step_id: str
    workflow: str


@final
@dataclass(frozen=True, slots=True)
class ChildOutcome:
    """How a child run ended, as :meth:`Context.wait_any` and
    :meth:`Context.cancel_child` recorded it.

    Attributes:
        run_id: the child's run id.
        index: its position in the list given to ``wait_any`` (0 for ``cancel_child``).
        status: ``completed``, ``failed``, ``dead_lettered`` or ``cancelled``.
        result: the child's result as JSON values (``None`` unless it completed).
        error_type, error_message: its error, for a child that failed or was
            dead-lettered.
    """

    run_id: str
    index: int
    status: RunStatus
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the child completed (ended normally)."""
        return self.status == RunStatus.COMPLETED

    @property
    def reason(self) -> str:
        """Why it ended, in one line: ``completed``, ``cancelled`` or the error."""
        if self.error_type is None:
            return str(self.status)
        return f"{self.status}: {self.error_type}: {self.error_message or ''}".rstrip()

    def to_json(self) -> str:
        return json.dumps({"run_id": self.run_id, "index": self.index,
                           "status": str(self.status), "result": self.result,
                           "error_type": self.error_type, "error_message": self.error_message})

    @classmethod
    def from_json(cls, text: str) -> ChildOutcome:
        d = json.loads(text)
        return cls(run_id=d["run_id"], index=int(d["index"]), status=RunStatus(d["status"]),
                   result=d.get("result"), error_type=d.get("error_type"),
                   error_message=d.get("error_message"))

    @classmethod
    def of(cls, rec: RunRecord, index: int) -> ChildOutcome:
        """The outcome of an ended child run's record."""
        error_type = error_message = None
        if rec.error is not None:
            try:
                info = ErrorInfo.from_json(rec.error)
                error_type, error_message = info.type, info.message
            except (ValueError, KeyError, TypeError):
                error_type, error_message = "unknown", rec.error
        result = decode(rec.result) if rec.status == RunStatus.COMPLETED and rec.result else None
        return cls(run_id=rec.run_id, index=index, status=rec.status, result=result,
                   error_type=error_type, error_message=error_message)


def _replayed(ex: Execution, step_id: str, outcome: Event) -> str:
    """A recorded outcome of one of these steps: its value, or its error raised."""
    if outcome.kind != EventKind.STEP_COMPLETED:
        replayed(ex, step_id, outcome, Any)
    return outcome.payload or "null"


async def child(ex: Execution, workflow: Workflow[Any, Any], args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
    """:meth:`Context.child`."""
    step_name = f"child:{workflow.name}"
    step_id, recorded = begin(ex, step_name)
    tp = workflow.result_type
    outcome = recorded_outcome(recorded)
    if outcome is not None:
        return replayed(ex, step_id, outcome, tp)
    ex.go_live(step_id, step_name)
    child_id = f"{ex.run_id}/{step_id}"
    if not recorded:
        await ex.create_child(child_id, step_id, step_name, workflow, args, kwargs)
    since = ex.clock.monotonic()
    while True:
        rec = await ex.child_settled(child_id)
        if rec.status in TERMINAL_STATUSES:
            break
        await ex.wait_for_wakeup(None, since)
    if rec.status == RunStatus.COMPLETED:
        await ex.record([NewEvent(EventKind.STEP_COMPLETED, step_id, step_name,
                                  rec.result or "null")])
        return decode(rec.result or "null", tp)
    if rec.status == RunStatus.CANCELLED and await ex.cancel_was_requested():
        raise Cancelled()  # cancelled with this run (a cancel cascades): not a failure
    err: BaseException
    if rec.status == RunStatus.CANCELLED:
        err = RunCancelledError(f"child run {child_id} was cancelled",
                                run_id=ex.run_id, step_id=step_id)
    else:
        info = ErrorInfo.from_json(rec.error or '{"type": "?", "message": "?"}')
        err = RunFailedError(f"child run {child_id} failed: {info.type}: {info.message}",
                             error_type=info.type, run_id=ex.run_id, step_id=step_id)
    await record_failure(ex, step_id, step_name, err)
    raise err


async def start_child(ex: Execution, workflow: Workflow[Any, Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> ChildRun:
    """:meth:`Context.start_child`."""
    step_name = f"start:{workflow.name}"
    step_id, recorded = begin(ex, step_name)
    outcome = recorded_outcome(recorded)
    if outcome is not None:
        return ChildRun(**json.loads(_replayed(ex, step_id, outcome)))
    ex.go_live(step_id, step_name)
    handle = ChildRun(f"{ex.run_id}/{step_id}", step_id, workflow.name)
    text = json.dumps({"run_id": handle.run_id, "step_id": step_id,
                       "workflow": workflow.name})
    done = NewEvent(EventKind.STEP_COMPLETED, step_id, step_name, text)
    if recorded:  # started, but its handle was not recorded (a journal of an older kind)
        await ex.record([done])
    else:
        await ex.create_child(handle.run_id, step_id, step_name, workflow, args, kwargs,
                              also=[done])
    return handle


async def _ended(ex: Execution, handle: ChildRun) -> RunRecord | None:
    rec = await ex.child_settled(handle.run_id)
    return rec if rec.status in TERMINAL_STATUSES else None


async def _own_cancel(ex: Execution, rec: RunRecord) -> None:
    """A child cancelled because this run was (a cancel cascades): not an outcome to
    record, this run stops as cancelled."""
    if rec.status == RunStatus.CANCELLED and await ex.cancel_was_requested():
        raise Cancelled()


async def wait_any(ex: Execution, children: Sequence[ChildRun]) -> ChildOutcome:
    """:meth:`Context.wait_any`."""
    handles = list(children)
    if not handles or not all(isinstance(c, ChildRun) for c in handles):
        raise ConfigurationError("wait_any() needs one or more ChildRun handles "
                                 "(from ctx.start_child)")
    step_id, recorded = begin(ex, "stalwart.wait_any")
    outcome = recorded_outcome(recorded)
    if outcome is not None:
        return ChildOutcome.from_json(_replayed(ex, step_id, outcome))
    ex.go_live(step_id, "stalwart.wait_any")
    since = ex.clock.monotonic()
    while True:
        for i, handle in enumerate(handles):
            rec = await _ended(ex, handle)
            if rec is not None:
                await _own_cancel(ex, rec)
                got = ChildOutcome.of(rec, i)
                await ex.record([NewEvent(EventKind.STEP_COMPLETED, step_id,
                                          "stalwart.wait_any", got.to_json())])
                return got
        await ex.wait_for_wakeup(None, since)


async def cancel_child(ex: Execution, handle: ChildRun) -> ChildOutcome:
    """:meth:`Context.cancel_child`."""
    if not isinstance(handle, ChildRun):
        raise ConfigurationError(f"cancel_child() needs a ChildRun handle (from "
                                 f"ctx.start_child), not {type(handle).__name__}")
    step_id, recorded = begin(ex, "stalwart.cancel_child")
    outcome = recorded_outcome(recorded)
    if outcome is not None:
        return ChildOutcome.from_json(_replayed(ex, step_id, outcome))
    ex.go_live(step_id, "stalwart.cancel_child")
    rec = await _ended(ex, handle)
    if rec is None:
        await ex.fence()
        await ex.engine.cancel_run(handle.run_id)
    since = ex.clock.monotonic()
    while rec is None:
        await ex.wait_for_wakeup(None, since)
        rec = await _ended(ex, handle)
    got = ChildOutcome.of(rec, 0)
    await ex.record([NewEvent(EventKind.STEP_COMPLETED, step_id, "stalwart.cancel_child",
                              got.to_json())])
    return got

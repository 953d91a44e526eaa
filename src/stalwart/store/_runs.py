"""The rules of a run's life, as pure functions that every store calls: one place.

A run row changes by a handful of transitions: created; claimed (a lease, stolen from a
dead owner or taken from an expired one); renewed; appended to under its lease (steps,
signals taken), perhaps ending the execution (completed, failed, dead-lettered,
cancelled, parked asleep or waiting, handed back); woken (a signal, a child's end);
cancelled, with its children; redriven. Each transition is a function here from the row
as it is (:class:`RunState`) and the request to a :class:`Plan`: the row as it must
become, the events to journal (numbered and chained, see ``_chain``), another run to
wake in the same transaction, whether the run's children are cancelled next, whether
listeners are told. A store only locks the row, calls the function and writes what it
returns — *lock, plan, write* — inside its own transaction. SQLite, PostgreSQL and
:class:`~stalwart.testing.MemoryStore` thus cannot drift: a change to run semantics is
made here, once, and ``tests/store/test_runs.py`` checks every transition and, with
hypothesis, random sequences of them against a model.

The rules, in words:

* **Fencing.** A lease ``(owner, token)`` is current while the run is ``running`` under
  that owner and token. Every write made for an execution (events, a signal taken, a
  child started, the finish, a renewal) is planned only under a current lease; a stale
  one raises :class:`~stalwart.errors.LeaseLostError` and nothing is written. Each claim
  increments the token, so an owner's old execution is fenced from its own new one.
* **Ready.** A run can be claimed when it is pending, parked (asleep or waiting) and due,
  or running on a lease that expired; a dead owner's run whatever its expiry, if still
  held by that owner and token (the steal list). Claim order: :func:`claim_order`.
* **Wake-ups racing a park.** A wake-up (a signal, a child's end) sets
  ``wake_requested``, and makes a waiting run pending. A park into ``waiting`` with the
  flag set becomes ``pending`` instead, so a wake-up that arrived while the run was still
  executing is never lost; a park into ``sleeping`` while a cancel was requested does the
  same (the cancel is observed at once). A claim clears the flag.
* **Cancel.** A run that a live lease holds is only flagged (its worker observes the flag
  at the next step, through the append's answer); any other unfinished run is cancelled
  at once, its parent woken. Either way its children are cancelled next, in creation
  order. A finished run and its children are left as they are.
* **Ending.** A run that reaches a terminal status wakes its parent. Terminal states are
  final; only a dead-lettered run can be redriven (back to pending, with the step id that
  dead-lettered it journaled, so that step runs again with fresh attempts).

The PostgreSQL store also writes optimistically: it plans an append from the row as it
last wrote it and makes the write conditional on the row still being so
(:data:`APPEND_READS` are the columns :func:`plan_append` reads), which puts a step's
lease check and its outcome into one statement. A row that changed meanwhile falls back
to lock, plan, write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, final

from ..errors import ConfigurationError, LeaseLostError, RunNotFoundError, StoreCorruptedError
from ._base import (
    TERMINAL_STATUSES,
    EventKind,
    Finish,
    Lease,
    NewEvent,
    Owner,
    RunRecord,
    RunStatus,
)
from ._chain import GENESIS, chain, outcome_digest, run_digest

__all__ = [
    "APPEND_READS",
    "READY_ORDER_SQL",
    "STATE_COLUMNS",
    "EventRow",
    "NewRun",
    "Plan",
    "RunState",
    "can_steal",
    "check_lease",
    "claim_order",
    "is_current",
    "is_ready",
    "plan_append",
    "plan_cancel",
    "plan_claim",
    "plan_create",
    "plan_redrive",
    "plan_renew",
    "plan_take_signal",
    "plan_wake",
    "ready_sort_key",
    "ready_sql",
    "require",
    "state_from_row",
]

PARKED = frozenset({RunStatus.SLEEPING, RunStatus.WAITING})


class RunState(NamedTuple):
    """What the rules read and write of a run row: everything but what a run *is*
    (workflow, input, parent step, creation time), which never changes. (A named tuple:
    every append makes one, and ``_replace`` costs a tenth of ``dataclasses.replace``.)"""

    run_id: str
    parent_run_id: str | None
    status: RunStatus
    result: str | None
    error: str | None
    wake_at: float | None
    lease_owner: str | None
    lease_token: int
    lease_expires_at: float | None
    owner_host: str | None
    owner_pid: int | None
    cancel_requested: bool
    wake_requested: bool
    event_count: int
    event_head: str
    updated_at: float

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def record(self, base: RunRecord) -> RunRecord:
        """``base`` (the same run) with this state's fields."""
        return replace(
            base, status=self.status, result=self.result, error=self.error,
            wake_at=self.wake_at, lease_owner=self.lease_owner, lease_token=self.lease_token,
            lease_expires_at=self.lease_expires_at, owner_host=self.owner_host,
            owner_pid=self.owner_pid, cancel_requested=self.cancel_requested,
            updated_at=self.updated_at)


STATE_COLUMNS = ", ".join(RunState._fields)
"""The run table's columns that make a :class:`RunState` (the same in every SQL store),
in the order :func:`state_from_row` reads them."""

APPEND_READS = ("status", "lease_owner", "lease_token", "cancel_requested",
                "wake_requested", "event_count", "event_head")
"""The columns :func:`plan_append` reads. Two rows that agree on these get the same plan
(a property test holds it to that), so a write conditional on them is sound."""


def state_from_row(row: Sequence[Any]) -> RunState:
    """A row of :data:`STATE_COLUMNS` as a state (SQLite's integers made booleans).

    Raises:
        StoreCorruptedError: the row's status names no status, or a field is unreadable.
    """
    try:
        return RunState(
            row[0], row[1], RunStatus(row[2]), row[3], row[4],
            None if row[5] is None else float(row[5]), row[6], int(row[7]),
            None if row[8] is None else float(row[8]), row[9],
            None if row[10] is None else int(row[10]), bool(row[11]), bool(row[12]),
            int(row[13]), str(row[14]), float(row[15]))
    except (TypeError, ValueError):
        raise StoreCorruptedError(
            f"the journal is damaged at run {row[0]!r}: the run row has an unreadable "
            f"field (status {row[2]!r}); nothing was changed", run_id=str(row[0])) from None


EventRow = tuple[str, int, str, str | None, str | None, str | None, float, str]
"""An event as stores insert it: ``(run_id, seq, kind, step_id, name, payload,
created_at, digest)``."""


@final
@dataclass(frozen=True, slots=True)
class Plan:
    """What a transition does to one run (see the module docstring).

    Attributes:
        before: the row the plan was made from (a conditional write compares with it).
        after: the row as it must be written.
        events: the events to insert, numbered after ``before``'s and chained to its head.
        wake: a run to wake (:func:`plan_wake`) in the same transaction: the parent.
        cascade: (a cancel) cancel the run's children next.
        notify: listeners should hear about the run (PostgreSQL's NOTIFY, after commit).
        writes: the columns the transition sets (to ``after``'s values), whether or not
            a value differs from ``before``'s: a write made from a remembered row must
            not depend on that row's other columns.
    """

    before: RunState
    after: RunState
    events: tuple[EventRow, ...] = ()
    wake: str | None = None
    cascade: bool = False
    notify: bool = False
    writes: tuple[str, ...] = ()

    def changes(self) -> dict[str, Any]:
        """The columns to write, with their values (and the outcome's digest when the
        result or the error is written)."""
        out = {name: getattr(self.after, name) for name in self.writes}
        if "result" in out or "error" in out:
            out["outcome_digest"] = outcome_digest(self.after.run_id, self.after.result,
                                                   self.after.error)
        return out

    @property
    def changed(self) -> bool:
        return bool(self.writes)


_COUNT = ("event_count", "event_head", "updated_at")
_FINISH = (*_COUNT, "status", "result", "error", "wake_at", "lease_owner",
           "lease_expires_at")
_CLAIM = (*_COUNT, "status", "lease_owner", "lease_token", "lease_expires_at",
          "owner_host", "owner_pid", "wake_at", "wake_requested")
_WAKE = ("status", "wake_at", "wake_requested", "updated_at")
_FLAG = ("cancel_requested", "wake_requested", "updated_at")
_CANCEL = (*_COUNT, "status", "cancel_requested", "lease_owner", "lease_expires_at",
           "wake_at")
_REDRIVE = (*_COUNT, "status", "result", "error", "cancel_requested")
_CLEANUP = ("status", "wake_at", "cancel_requested", "wake_requested", "updated_at")


def _unchanged(state: RunState) -> Plan:
    return Plan(state, state)


def _events(state: RunState, events: Sequence[NewEvent], now: float
            ) -> tuple[tuple[EventRow, ...], int, str]:
    """``events`` numbered and chained after ``state``'s, and the run's new event count
    and head."""
    if not events:
        return (), state.event_count, state.event_head
    first = state.event_count + 1
    digests = chain(state.event_head, state.run_id, first, events, now)
    rows = tuple((state.run_id, first + i, str(ev.kind), ev.step_id, ev.name, ev.payload,
                  now, digest) for i, (ev, digest) in enumerate(zip(events, digests,
                                                                      strict=True)))
    return rows, first + len(events) - 1, digests[-1]


# -- finding runs ------------------------------------------------------------------


def require(state: RunState | None, run_id: str) -> RunState:
    """``state``, or :class:`~stalwart.errors.RunNotFoundError` when there is none."""
    if state is None:
        raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
    return state


def is_current(state: RunState | None, lease: Lease) -> bool:
    """Whether ``lease`` is the run's current lease (fencing)."""
    return (state is not None and state.status == RunStatus.RUNNING
            and state.lease_owner == lease.owner and state.lease_token == lease.token)


def check_lease(state: RunState | None, lease: Lease) -> RunState:
    """``state`` when ``lease`` is current, else :class:`~stalwart.errors.LeaseLostError`."""
    if state is None or not is_current(state, lease):
        raise LeaseLostError(
            f"run {lease.run_id}: lease {lease.owner}#{lease.token} is no longer current",
            run_id=lease.run_id)
    return state


def is_ready(state: RunState, now: float) -> bool:
    """Whether a claim at ``now`` may take the run (:func:`ready_sql` in SQL)."""
    if state.status == RunStatus.PENDING:
        return True
    if state.status == RunStatus.RUNNING:
        return state.lease_expires_at is not None and state.lease_expires_at < now
    return state.status in PARKED and state.wake_at is not None and state.wake_at <= now


def ready_sql(now: str) -> str:
    """:func:`is_ready` as an SQL condition; ``now`` is the parameter's placeholder."""
    return (f"(status = 'pending' OR (status = 'running' AND lease_expires_at < {now}) "
            f"OR (status IN ('sleeping', 'waiting') AND wake_at IS NOT NULL "
            f"AND wake_at <= {now}))")


def can_steal(state: RunState, owner: str, token: int) -> bool:
    """Whether a dead owner's run is still held by that owner and token."""
    return (state.status == RunStatus.RUNNING and state.lease_owner == owner
            and state.lease_token == token)


READY_ORDER_SQL = "CASE WHEN status = 'running' THEN 0 ELSE 1 END, created_at"
"""The ``ORDER BY`` of ready runs (a store appends its own tie-breaker for runs created
at the same instant): expired leases first, then the oldest."""


def ready_sort_key(status: RunStatus, created_at: float, order: int) -> tuple[int, float, int]:
    """:data:`READY_ORDER_SQL` for one run; ``order`` breaks ties (creation order)."""
    return (0 if status == RunStatus.RUNNING else 1, created_at, order)


def claim_order(stolen: Sequence[str], ready: Sequence[str], limit: int) -> list[str]:
    """The run ids a claim takes, in order: ``stolen`` (dead owners' runs, checked still
    theirs) first, then ``ready`` (in :data:`READY_ORDER_SQL` order: expired leases, then
    the oldest), each once, at most ``limit``.

    Dead owners' and expired runs are the oldest work in the store; filling the limit
    with the backlog first left a killed worker's runs waiting until the queue drained
    (issue 13.8).
    """
    out: list[str] = []
    seen: set[str] = set()
    for run_id in (*stolen, *ready):
        if len(out) >= limit:
            break
        if run_id not in seen:
            seen.add(run_id)
            out.append(run_id)
    return out


# -- transitions ---------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to insert: its state, what it is, its digests and its first events."""

    state: RunState
    record: RunRecord
    run_digest: str
    outcome_digest: str
    events: tuple[EventRow, ...]


def plan_create(*, run_id: str, workflow: str, input: str, now: float,
                workflow_ref: str | None = None, parent_run_id: str | None = None,
                parent_step_id: str | None = None,
                events: Sequence[NewEvent] = ()) -> NewRun:
    """A new pending run, journaling ``run_created`` and then ``events`` (a fork's copied
    prefix). The store inserts it unless a run with that id exists (then nothing)."""
    empty = RunState(
        run_id=run_id, parent_run_id=parent_run_id, status=RunStatus.PENDING, result=None,
        error=None, wake_at=None, lease_owner=None, lease_token=0, lease_expires_at=None,
        owner_host=None, owner_pid=None, cancel_requested=False, wake_requested=False,
        event_count=0, event_head=GENESIS, updated_at=now)
    rows, count, head = _events(empty, [NewEvent(EventKind.RUN_CREATED, name=workflow,
                                                 payload=input), *events], now)
    state = empty._replace(event_count=count, event_head=head)
    record = RunRecord(
        run_id=run_id, workflow=workflow, workflow_ref=workflow_ref,
        status=RunStatus.PENDING, input=input, result=None, error=None,
        parent_run_id=parent_run_id, parent_step_id=parent_step_id, created_at=now,
        updated_at=now, wake_at=None, lease_owner=None, lease_token=0,
        lease_expires_at=None, owner_host=None, owner_pid=None, cancel_requested=False)
    return NewRun(state, record,
                  run_digest(run_id, workflow, workflow_ref, input, parent_run_id,
                             parent_step_id, now),
                  outcome_digest(run_id, None, None), rows)


def plan_claim(state: RunState, owner: Owner, *, now: float, lease_seconds: float,
               steal: tuple[str, int] | None = None) -> Plan | None:
    """Claim the run for ``owner`` until ``now + lease_seconds``: a new token, the wake
    flag cleared, ``run_claimed`` journaled. ``None`` when the run is not claimable (not
    ready; with ``steal=(owner, token)``, no longer held by that dead owner)."""
    if not (is_ready(state, now) or (steal is not None and can_steal(state, *steal))):
        return None
    rows, count, head = _events(state, [NewEvent(
        EventKind.RUN_CLAIMED, name=owner.id,
        payload=json.dumps({"host": owner.host, "pid": owner.pid}))], now)
    return Plan(state, state._replace(
        status=RunStatus.RUNNING, lease_owner=owner.id, lease_token=state.lease_token + 1,
        lease_expires_at=now + lease_seconds, owner_host=owner.host, owner_pid=owner.pid,
        wake_at=None, wake_requested=False, event_count=count, event_head=head,
        updated_at=now), rows, writes=_CLAIM)


def plan_renew(state: RunState | None, lease: Lease, *, now: float,
               lease_seconds: float) -> Plan | None:
    """Extend a current lease to ``now + lease_seconds``; ``None`` when it was lost."""
    if state is None or not is_current(state, lease):
        return None
    return Plan(state, state._replace(lease_expires_at=now + lease_seconds),
                writes=("lease_expires_at",))


def _one_outcome_each(lease: Lease, events: Sequence[NewEvent]) -> None:
    if len(events) < 2:
        return
    steps = [ev.step_id for ev in events if ev.kind == EventKind.STEP_COMPLETED]
    if len(steps) != len(set(steps)):
        raise LeaseLostError(f"run {lease.run_id}: two outcomes for one step in one append",
                             run_id=lease.run_id)


def _parked_status(state: RunState, finish: Finish) -> tuple[RunStatus, float | None]:
    """Where a finish leaves the run: a wake-up or a cancel that raced the park turns it
    into pending (see the module docstring)."""
    if finish.status == RunStatus.WAITING and state.wake_requested:
        return RunStatus.PENDING, None
    if finish.status == RunStatus.SLEEPING and state.cancel_requested:
        return RunStatus.PENDING, None
    return finish.status, finish.wake_at


def plan_append(state: RunState | None, lease: Lease, events: Sequence[NewEvent], *,
                now: float, finish: Finish | None = None) -> Plan:
    """Journal ``events`` under ``lease``; with ``finish``, end the execution: the lease
    is released and the run completed, failed, dead-lettered, cancelled, parked or handed
    back (``pending``). A terminal run wakes its parent.

    The store also refuses a second outcome for a step already recorded (a unique
    index); two in one append are refused here.

    Raises:
        LeaseLostError: ``lease`` is not current (fenced), or two outcomes of one step.
        ValueError: ``finish`` would leave the run running.
    """
    current = check_lease(state, lease)
    _one_outcome_each(lease, events)
    rows, count, head = _events(current, events, now)
    if finish is None:
        return Plan(current, current._replace(event_count=count, event_head=head,
                                              updated_at=now), rows, writes=_COUNT)
    if finish.status == RunStatus.RUNNING:
        raise ValueError("a finish ends the execution: RUNNING is no status to end in")
    status, wake_at = _parked_status(current, finish)
    after = current._replace(status=status, result=finish.result, error=finish.error,
                             wake_at=wake_at, lease_owner=None, lease_expires_at=None,
                             event_count=count, event_head=head, updated_at=now)
    return Plan(current, after, rows, notify=True, writes=_FINISH,
                wake=current.parent_run_id if status in TERMINAL_STATUSES else None)


def plan_take_signal(state: RunState | None, lease: Lease, *, name: str, step_id: str,
                     payload: str, now: float) -> Plan:
    """Journal the signal ``name`` (its oldest pending ``payload``) as received at
    ``step_id``, under ``lease``.

    Raises:
        LeaseLostError: ``lease`` is not current; nothing is consumed.
    """
    return plan_append(state, lease, [NewEvent(EventKind.SIGNAL_RECEIVED, step_id=step_id,
                                               name=name, payload=payload)], now=now)


def plan_wake(state: RunState, *, now: float) -> Plan:
    """A wake-up (a signal, a child's end): a waiting run becomes pending at once; any
    unfinished run keeps ``wake_requested``, so that a park racing the wake-up turns into
    pending (see :func:`plan_append`). Listeners hear of it. A finished run is left as
    it is."""
    if state.is_terminal:
        return _unchanged(state)
    if state.status == RunStatus.WAITING:
        return Plan(state, state._replace(status=RunStatus.PENDING, wake_at=None,
                                          wake_requested=True, updated_at=now),
                    notify=True, writes=_WAKE)
    if state.wake_requested:
        return Plan(state, state, notify=True)
    return Plan(state, state._replace(wake_requested=True, updated_at=now), notify=True,
                writes=("wake_requested", "updated_at"))


def plan_cancel(state: RunState, *, now: float, cleanups: int = 0) -> Plan:
    """Cancel the run: flag it when a live lease holds it (its worker observes the flag at
    its next step), else cancel it at once (``run_cancelled`` journaled, the parent
    woken). A run that holds an open cleanup scope (``cleanups``, counted by
    ``_base.open_cleanups``: ``ctx.cleanup_on_cancel``, a saga) is not ended by the
    store either: flagged and made ready (a parked one pending), so that its code cleans
    up. ``cascade`` tells the store to cancel the children next; a finished run and its
    children are left as they are."""
    if state.is_terminal:
        return _unchanged(state)
    live = (state.status == RunStatus.RUNNING and state.lease_expires_at is not None
            and state.lease_expires_at >= now)
    if not live and cleanups > 0:
        status = RunStatus.PENDING if state.status in PARKED else state.status
        return Plan(state, state._replace(status=status, wake_at=None,
                                          cancel_requested=True, wake_requested=True,
                                          updated_at=now), cascade=True, notify=True,
                    writes=_CLEANUP)
    if live:
        if state.cancel_requested and state.wake_requested:
            return Plan(state, state, cascade=True, notify=True)
        return Plan(state, state._replace(cancel_requested=True, wake_requested=True,
                                          updated_at=now),
                    cascade=True, notify=True, writes=_FLAG)
    rows, count, head = _events(state, [NewEvent(EventKind.RUN_CANCELLED)], now)
    after = state._replace(status=RunStatus.CANCELLED, cancel_requested=True,
                           lease_owner=None, lease_expires_at=None, wake_at=None,
                           event_count=count, event_head=head, updated_at=now)
    return Plan(state, after, rows, wake=state.parent_run_id, cascade=True, notify=True,
                writes=_CANCEL)


def plan_redrive(state: RunState, dead_step_id: str | None, *, now: float) -> Plan:
    """Put a dead-lettered run back to pending, journaling ``run_redriven`` with the step
    id that dead-lettered it (``dead_step_id``, from its last ``run_dead_lettered``).

    Raises:
        ConfigurationError: the run is not dead-lettered.
    """
    if state.status != RunStatus.DEAD_LETTERED:
        raise ConfigurationError(
            f"run {state.run_id} is {state.status}, not dead_lettered; only dead-lettered "
            "runs can be retried", run_id=state.run_id)
    rows, count, head = _events(
        state, [NewEvent(EventKind.RUN_REDRIVEN, step_id=dead_step_id)], now)
    return Plan(state, state._replace(status=RunStatus.PENDING, result=None, error=None,
                                      cancel_requested=False, event_count=count,
                                      event_head=head, updated_at=now),
                rows, notify=True, writes=_REDRIVE)

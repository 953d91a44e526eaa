"""PostgresStore's group commit, its bookkeeping: the queued appends, the runs each
flusher holds, the states the store last wrote, and which appends can be planned
from those and written as one.

The store's flushers (``PostgresStore._flush``) do the I/O: they take a batch from the
:class:`Queue`, plan each run's leading appends from its :class:`Held` state
(:func:`plan_from`), write them :func:`merged` in one conditional statement, and settle
each append's future (:func:`settle`). Everything here is synchronous and reads no row:
it is kept apart from ``_postgres`` so that the rules of the fast path (what may be
written without locking the row first) can be read on their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import LeaseLostError
from ._base import AppendResult, EventKind, Finish, Lease, NewEvent, RunStatus
from ._runs import Plan, RunState, is_current, plan_append

__all__ = ["Append", "Held", "Queue", "merged", "plan_from", "settle"]

_HELD_MAX = 100_000


@dataclass(slots=True)
class Append:
    lease: Lease
    events: Sequence[NewEvent]
    now: float
    finish: Finish | None
    future: asyncio.Future[AppendResult]


class Held:
    """Runs this store holds a lease on, as it last wrote them: appends are planned
    from these and written conditionally (see ``_postgres``'s docstring)."""

    def __init__(self) -> None:
        self._states: dict[str, RunState] = {}

    def get(self, run_id: str) -> RunState | None:
        return self._states.get(run_id)

    def hold(self, state: RunState) -> None:
        if state.status != RunStatus.RUNNING:
            self._states.pop(state.run_id, None)
            return
        if len(self._states) >= _HELD_MAX and state.run_id not in self._states:
            self._states.clear()  # a safety valve: the fallback path needs no memory
        self._states[state.run_id] = state

    def forget(self, lease: Lease) -> None:
        held = self._states.get(lease.run_id)
        if held is not None and held.lease_token <= lease.token:
            del self._states[lease.run_id]

    def renewed(self, state: RunState) -> None:
        held = self._states.get(state.run_id)
        if held is not None and held.lease_token == state.lease_token:
            self._states[state.run_id] = held._replace(lease_expires_at=state.lease_expires_at)


class Queue:
    """The appends waiting for a flusher, and the runs the flushers are writing."""

    def __init__(self) -> None:
        self._pending: list[Append] = []
        self._flushing: set[str] = set()
        """Runs whose appends a flusher is writing (the others leave them to it)."""

    def add(self, item: Append) -> None:
        self._pending.append(item)

    def take(self, max_batch: int) -> list[Append]:
        """Up to ``max_batch`` queued appends, in order, of runs no other flusher is
        writing (a run's appends are written by one flusher at a time, in order)."""
        batch: list[Append] = []
        rest: list[Append] = []
        mine: set[str] = set()
        for item in self._pending:
            run_id = item.lease.run_id
            if len(batch) < max_batch and (run_id in mine or run_id not in self._flushing):
                batch.append(item)
                mine.add(run_id)
            else:
                rest.append(item)
        self._pending = rest
        self._flushing |= mine
        return batch

    def release(self, runs: set[str]) -> None:
        """A flusher is done with ``runs``."""
        self._flushing -= runs


def plan_from(held: RunState | None, items: Sequence[Append]) -> list[tuple[Append, Plan]]:
    """The leading ``items`` (one run's appends, in order) that can be planned from the
    state the store last wrote, each on the one before: up to a finish, an append that
    wakes another run (written with it in one transaction instead) or one that the
    remembered state refuses (the locked path decides). Two appends recording one step
    are not written together either (the second must fail alone)."""
    out: list[tuple[Append, Plan]] = []
    steps: set[str | None] = set()
    state = held
    for item in items:
        if state is None or not is_current(state, item.lease):
            break
        try:
            plan = plan_append(state, item.lease, item.events, now=item.now,
                               finish=item.finish)
        except (LeaseLostError, ValueError):
            break
        recorded = {ev.step_id for ev in item.events if ev.kind == EventKind.STEP_COMPLETED}
        if plan.wake is not None or recorded & steps:
            break
        steps |= recorded
        out.append((item, plan))
        state = plan.after
        if state.status != RunStatus.RUNNING:
            break
    return out


def merged(plans: Sequence[Plan]) -> Plan:
    """Consecutive plans of one run (each made from the one before) as one write."""
    return Plan(plans[0].before, plans[-1].after,
                tuple(ev for plan in plans for ev in plan.events),
                notify=any(plan.notify for plan in plans),
                writes=tuple(dict.fromkeys(c for plan in plans for c in plan.writes)))


def settle(fut: asyncio.Future[AppendResult], outcome: AppendResult | BaseException) -> None:
    if fut.done():
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)

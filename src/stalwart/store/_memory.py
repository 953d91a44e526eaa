"""An in-memory store: the Store protocol with no disk and no threads.

For tests and virtual-time benchmarks (:mod:`stalwart.testing` exports it), and the
scratch journal of ``runs replay`` (:mod:`stalwart._timetravel`), which must write
nothing to the real one. Everything happens on the event loop, so a
:class:`~stalwart.FakeClock` with ``autojump=True`` sees the loop idle only when every
run really waits on the clock — which makes hour-long backoffs and outages exact and
instant. It passes the same conformance suite as the real stores; it keeps nothing
after the process ends, so it is no journal for production.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import final

from ..errors import LeaseLostError
from ._approvals import DECISION_SIGNAL_PREFIX, is_approval_event
from ._base import (
    AppendResult,
    ApprovalJournal,
    Event,
    EventKind,
    Finish,
    Lease,
    NewEvent,
    Owner,
    RunRecord,
    RunStatus,
    WorkerRecord,
    open_cleanups,
)
from ._board import (
    BoardEntry,
    BoardOp,
    BoardWatch,
    choose,
    plan,
    wake_action,
    wake_payload,
    watching,
)
from ._chain import verify_each, verify_events
from ._limits import (
    BucketDraw,
    BucketState,
    Reservation,
    plan_adjustment,
    plan_reservation,
)
from ._runs import (
    EventRow,
    Plan,
    RunState,
    can_steal,
    check_lease,
    claim_order,
    is_ready,
    plan_append,
    plan_cancel,
    plan_claim,
    plan_create,
    plan_redrive,
    plan_renew,
    plan_take_signal,
    plan_wake,
    ready_sort_key,
    require,
)

__all__ = ["MemoryStore"]


@dataclass
class _Run:
    base: RunRecord
    """What the run is (and its row as created); ``state`` holds what changes."""
    state: RunState
    events: list[Event] = field(default_factory=list)
    digests: dict[int, str] = field(default_factory=dict)
    """Each event's digest by sequence number (see ``stalwart.store._chain``), kept apart
    from the events like the SQL stores' columns, so that a test can damage one without
    the other (the chain's length and head are in ``state``)."""
    approvals: list[int] = field(default_factory=list)
    """Where the approval events are in ``events`` (the SQL stores' partial index)."""
    order: int = 0

    @property
    def rec(self) -> RunRecord:
        return self.state.record(self.base)


@dataclass
class _Signal:
    id: int
    run_id: str
    name: str
    payload: str
    consumed_step_id: str | None = None


@final
class MemoryStore:
    """The Store protocol in memory (see the module docstring). Every transition is
    planned by ``stalwart.store._runs``, as in the SQL stores: look the run up, plan,
    apply."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._signals: list[_Signal] = []
        self._order = 0
        self._workers: dict[str, WorkerRecord] = {}
        self._buckets: dict[str, BucketState] = {}
        self._slots: dict[str, dict[str, float]] = {}  # pool -> holder -> expires_at
        self._board: dict[tuple[str, str], BoardEntry] = {}
        self._board_ops: dict[str, BoardEntry] = {}
        self._watches: dict[tuple[str, str], BoardWatch] = {}
        self.commits = 0
        """Write operations performed (the counterpart of SQLiteStore.commits)."""

    @property
    def url(self) -> str:
        return "memory://"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @staticmethod
    async def _yield() -> None:
        await asyncio.sleep(0)

    def _state(self, run_id: str | None) -> RunState | None:
        run = self._runs.get(run_id) if run_id is not None else None
        return run.state if run is not None else None

    def _refuse_second_outcomes(self, run_id: str, events: Sequence[NewEvent]) -> None:
        """The SQL stores' unique index: one outcome per step of a run."""
        run = self._runs.get(run_id)
        steps = {ev.step_id for ev in events if ev.kind == EventKind.STEP_COMPLETED}
        if run is not None and steps and any(
                e.kind == EventKind.STEP_COMPLETED and e.step_id in steps for e in run.events):
            raise LeaseLostError(f"run {run_id}: a step outcome was already recorded",
                                 run_id=run_id)

    def _insert(self, run: _Run, rows: Sequence[EventRow]) -> None:
        for run_id, seq, kind, step_id, name, payload, at, digest in rows:
            if is_approval_event(kind, name):
                run.approvals.append(len(run.events))
            run.events.append(Event(run_id, seq, EventKind(kind), step_id, name, payload, at))
            run.digests[seq] = digest

    def _apply(self, plan: Plan, now: float) -> None:
        """Write ``plan``, then wake the run it names."""
        run = self._runs[plan.before.run_id]
        self._insert(run, plan.events)
        run.state = plan.after
        if plan.wake is not None and (parent := self._state(plan.wake)) is not None:
            self._apply(plan_wake(parent, now=now), now)

    # -- runs ------------------------------------------------------------------------

    async def create_run(
        self,
        *,
        run_id: str,
        workflow: str,
        input: str,
        now: float,
        workflow_ref: str | None = None,
        parent: Lease | None = None,
        parent_step_id: str | None = None,
        parent_events: Sequence[NewEvent] = (),
        events: Sequence[NewEvent] = (),
    ) -> tuple[RunRecord, bool]:
        await self._yield()
        # Plan everything before changing anything, as a transaction would.
        parent_plan = None
        if parent is not None:
            parent_plan = plan_append(self._state(parent.run_id), parent, parent_events,
                                      now=now)
            self._refuse_second_outcomes(parent.run_id, parent_events)
        existing = self._runs.get(run_id)
        created = existing is None
        if existing is None:
            new = plan_create(run_id=run_id, workflow=workflow, input=input, now=now,
                              workflow_ref=workflow_ref,
                              parent_run_id=parent.run_id if parent else None,
                              parent_step_id=parent_step_id, events=events)
            self._order += 1
            existing = self._runs[run_id] = _Run(new.record, new.state, order=self._order)
            self._insert(existing, new.events)
        if parent_plan is not None and parent_events:
            self._apply(parent_plan, now)
        self.commits += 1
        return existing.rec, created

    async def get_run(self, run_id: str) -> RunRecord | None:
        await self._yield()
        run = self._runs.get(run_id)
        return run.rec if run else None

    async def list_runs(self, *, status: RunStatus | None = None,
                        parent_run_id: str | None = None, limit: int = 100,
                        workflow: str | None = None, created_before: float | None = None,
                        created_since: float | None = None) -> list[RunRecord]:
        await self._yield()
        runs = [r for r in self._runs.values()
                if (status is None or r.state.status == status)
                and (parent_run_id is None or r.state.parent_run_id == parent_run_id)
                and (workflow is None or r.base.workflow == workflow)
                and (created_before is None or r.base.created_at < created_before)
                and (created_since is None or r.base.created_at >= created_since)]
        runs.sort(key=lambda r: (r.base.created_at, r.order), reverse=True)
        return [r.rec for r in runs[:limit]]

    async def load_events(self, run_id: str) -> list[Event]:
        await self._yield()
        run = self._runs.get(run_id)
        if run is None:
            return []
        rows = [(e.seq, str(e.kind), e.step_id, e.name, e.payload, e.created_at,
                 run.digests.get(e.seq)) for e in run.events]
        return verify_events(run_id, rows, count=run.state.event_count,
                             head=run.state.event_head)

    async def approval_journals(self, run_ids: Sequence[str]) -> list[ApprovalJournal]:
        await self._yield()
        queued: dict[str, list[str]] = {}
        for sig in self._signals:
            if sig.consumed_step_id is None and sig.name.startswith(DECISION_SIGNAL_PREFIX):
                queued.setdefault(sig.run_id, []).append(sig.name)
        out = []
        for run_id in dict.fromkeys(run_ids):
            run = self._runs.get(run_id)
            if run is None or not run.approvals:
                continue
            found = [run.events[i] for i in run.approvals]
            events = verify_each(run_id, (
                ((e.seq, str(e.kind), e.step_id, e.name, e.payload, e.created_at,
                  run.digests.get(e.seq)), run.digests.get(e.seq - 1)) for e in found))
            out.append(ApprovalJournal(run_id, tuple(events), tuple(queued.get(run_id, ()))))
        return out

    async def run_ids(self) -> list[str]:
        """Every run id, oldest first (``stalwart doctor``)."""
        await self._yield()
        return [r.base.run_id for r in sorted(self._runs.values(),
                                              key=lambda r: (r.base.created_at, r.order))]

    # -- leases ----------------------------------------------------------------------

    async def claim(self, owner: Owner, *, now: float, lease_seconds: float, limit: int,
                    run_id: str | None = None, steal: Sequence[tuple[str, str, int]] = (),
                    workflows: Sequence[str] | None = None) -> list[Lease]:
        await self._yield()
        if workflows is not None and not workflows:
            return []
        allowed = None if workflows is None else set(workflows)

        def eligible(run: _Run | None) -> bool:
            return run is not None and (allowed is None or run.base.workflow in allowed)

        stolen: dict[str, tuple[str, int]] = {}
        for sid, sowner, stoken in steal:
            if (run_id is None or sid == run_id) and eligible(self._runs.get(sid)) \
                    and can_steal(self._runs[sid].state, sowner, stoken):
                stolen.setdefault(sid, (sowner, stoken))
        pool = ([self._runs[run_id]] if run_id is not None and run_id in self._runs
                else [] if run_id is not None else list(self._runs.values()))
        ready = sorted((r for r in pool if eligible(r) and is_ready(r.state, now)),
                       key=lambda r: ready_sort_key(r.state.status, r.base.created_at,
                                                    r.order))
        leases = []
        for rid in claim_order(list(stolen), [r.base.run_id for r in ready], limit):
            plan = plan_claim(self._runs[rid].state, owner, now=now,
                              lease_seconds=lease_seconds, steal=stolen.get(rid))
            assert plan is not None  # checked above, nothing ran in between
            self._apply(plan, now)
            leases.append(Lease(rid, owner.id, plan.after.lease_token, now + lease_seconds))
        self.commits += 1
        return leases

    async def local_running(self, host: str) -> list[RunRecord]:
        await self._yield()
        return [r.rec for r in self._runs.values()
                if r.state.status == RunStatus.RUNNING and r.state.owner_host == host]

    async def renew(self, leases: Sequence[Lease], *, now: float,
                    lease_seconds: float) -> dict[str, Lease | None]:
        await self._yield()
        out: dict[str, Lease | None] = {}
        for lease in leases:
            plan = plan_renew(self._state(lease.run_id), lease, now=now,
                              lease_seconds=lease_seconds)
            if plan is not None:
                self._apply(plan, now)
            out[lease.run_id] = (None if plan is None
                                 else replace(lease, expires_at=now + lease_seconds))
        self.commits += 1
        return out

    # -- the journal -----------------------------------------------------------------

    async def append(self, lease: Lease, events: Sequence[NewEvent], *, now: float,
                     finish: Finish | None = None) -> AppendResult:
        await self._yield()
        plan = plan_append(self._state(lease.run_id), lease, events, now=now, finish=finish)
        self._refuse_second_outcomes(lease.run_id, events)
        self._apply(plan, now)
        self.commits += 1
        return AppendResult(cancel_requested=plan.before.cancel_requested)

    # -- signals, cancellation, redrive ------------------------------------------------

    async def send_signal(self, run_id: str, name: str, payload: str, *, now: float) -> RunRecord:
        await self._yield()
        plan = plan_wake(require(self._state(run_id), run_id), now=now)
        self._signals.append(_Signal(len(self._signals) + 1, run_id, name, payload))
        self._apply(plan, now)
        self.commits += 1
        return self._runs[run_id].rec

    async def pending_signals(self, run_id: str) -> list[tuple[str, str]]:
        await self._yield()
        return [(sig.name, sig.payload) for sig in self._signals
                if sig.run_id == run_id and sig.consumed_step_id is None]

    async def take_signal(self, lease: Lease, name: str, step_id: str, *,
                          now: float) -> str | None:
        await self._yield()
        check_lease(self._state(lease.run_id), lease)
        for sig in self._signals:
            if sig.run_id == lease.run_id and sig.name == name and sig.consumed_step_id is None:
                self._apply(plan_take_signal(self._state(lease.run_id), lease, name=name,
                                             step_id=step_id, payload=sig.payload, now=now),
                            now)
                sig.consumed_step_id = step_id
                self.commits += 1
                return sig.payload
        return None

    def _cancel(self, run_id: str, now: float) -> None:
        state = self._state(run_id)
        if state is None:
            return
        events = self._runs[run_id].events
        plan = plan_cancel(state, now=now, cleanups=open_cleanups(
            (e.kind, e.name) for e in events))
        self._apply(plan, now)
        if plan.cascade:
            for child in [c for c in self._runs.values() if c.state.parent_run_id == run_id]:
                self._cancel(child.base.run_id, now)

    async def request_cancel(self, run_id: str, *, now: float) -> RunRecord:
        await self._yield()
        require(self._state(run_id), run_id)
        self._cancel(run_id, now)
        self.commits += 1
        return self._runs[run_id].rec

    async def redrive(self, run_id: str, *, now: float) -> RunRecord:
        await self._yield()
        run = self._runs.get(run_id)
        state = require(run.state if run else None, run_id)
        assert run is not None
        dead = [e for e in run.events if e.kind == EventKind.RUN_DEAD_LETTERED]
        self._apply(plan_redrive(state, dead[-1].step_id if dead else None, now=now), now)
        self.commits += 1
        return run.rec

    async def next_wake_at(self) -> float | None:
        await self._yield()
        wakes = [r.state.wake_at for r in self._runs.values()
                 if r.state.status in (RunStatus.SLEEPING, RunStatus.WAITING)
                 and r.state.wake_at is not None]
        return min(wakes) if wakes else None

    # -- the workers registry --------------------------------------------------------

    async def save_worker(self, worker: WorkerRecord) -> None:
        await self._yield()
        self._workers[worker.worker_id] = worker
        self.commits += 1

    async def list_workers(self, *, since: float) -> list[WorkerRecord]:
        await self._yield()
        return sorted((w for w in self._workers.values() if w.heartbeat_at >= since),
                      key=lambda w: (w.started_at, w.worker_id))

    async def forget_workers(self, *, before: float) -> int:
        await self._yield()
        gone = [k for k, w in self._workers.items() if w.heartbeat_at < before]
        for k in gone:
            del self._workers[k]
        self.commits += 1
        return len(gone)

    # -- cluster-wide limits (shared by the runtimes that share this object) ------------

    @property
    def cluster_limits_default(self) -> bool:
        return False

    async def rate_reserve(self, draws: Sequence[BucketDraw], *, now: float,
                           max_wait: float | None = None) -> Reservation:
        await self._yield()
        reservation, states = plan_reservation(
            [self._buckets.get(d.key) for d in draws], draws, now=now, max_wait=max_wait)
        for draw, state in zip(draws, states, strict=True):
            self._buckets[draw.key] = state
        self.commits += 1
        return reservation

    async def rate_adjust(self, draws: Sequence[BucketDraw], *, now: float) -> tuple[float, ...]:
        await self._yield()
        for draw in draws:
            self._buckets[draw.key] = plan_adjustment(self._buckets.get(draw.key), draw, now=now)
        self.commits += 1
        return tuple(self._buckets[d.key].tokens for d in draws)

    async def bulkhead_acquire(self, pool: str, holder: str, *, max_concurrent: int,
                               now: float, lease_seconds: float) -> bool:
        await self._yield()
        slots = self._slots.setdefault(pool, {})
        for gone in [h for h, expires in slots.items() if expires < now]:
            del slots[gone]
        if holder not in slots and len(slots) >= max_concurrent:
            return False
        slots[holder] = now + lease_seconds
        self.commits += 1
        return True

    async def bulkhead_renew(self, holders: Sequence[str], *, now: float,
                             lease_seconds: float) -> set[str]:
        await self._yield()
        wanted, kept = set(holders), set()
        for slots in self._slots.values():
            for holder in wanted & slots.keys():
                slots[holder] = now + lease_seconds
                kept.add(holder)
        self.commits += 1
        return kept

    async def bulkhead_release(self, pool: str, holder: str) -> None:
        await self._yield()
        self._slots.get(pool, {}).pop(holder, None)
        self.commits += 1

    async def bulkhead_active(self, pool: str, *, now: float) -> int:
        await self._yield()
        return sum(1 for expires in self._slots.get(pool, {}).values() if expires >= now)

    # -- blackboards (see _board) ----------------------------------------------------

    async def board_apply(self, op: BoardOp, *, now: float) -> BoardEntry | None:
        await self._yield()
        done = self._board_ops.get(op.op_key)
        if done is not None:
            return done
        if op.kind == "take":
            assert op.pattern is not None
            current = choose(op.pattern, [e for (b, _), e in self._board.items()
                                          if b == op.board and not e.taken])
        else:
            current = self._board.get((op.board, op.key))
        entry = plan(op, current, now)
        if entry is None:
            return None
        self._board[(op.board, entry.key)] = entry
        self._board_ops[op.op_key] = entry
        self.commits += 1
        return entry

    async def board_entries(self, board: str, *, prefix: str = "") -> list[BoardEntry]:
        await self._yield()
        return sorted((e for (b, k), e in self._board.items()
                       if b == board and k.startswith(prefix)), key=lambda e: e.key)

    async def board_names(self) -> list[str]:
        await self._yield()
        return sorted({b for b, _ in self._board})

    async def board_watches(self, board: str) -> list[BoardWatch]:
        await self._yield()
        return sorted((w for w in self._watches.values() if w.board == board),
                      key=lambda w: (w.created_at, w.run_id, w.signal))

    async def board_watch(self, watch: BoardWatch) -> None:
        await self._yield()
        self._watches.setdefault((watch.run_id, watch.signal), watch)

    async def board_unwatch(self, run_id: str, signal: str) -> None:
        await self._yield()
        self._watches.pop((run_id, signal), None)

    async def board_wake(self, entry: BoardEntry, *, now: float) -> list[str]:
        await self._yield()
        woken: list[str] = []
        for w in watching(list(self._watches.values()), entry):
            pending = any(s.run_id == w.run_id and s.name == w.signal
                          and s.consumed_step_id is None for s in self._signals)
            state = self._state(w.run_id)
            action = wake_action(state, pending)
            if action == "forget":
                del self._watches[(w.run_id, w.signal)]
            elif action == "signal":
                assert state is not None
                self._signals.append(_Signal(len(self._signals) + 1, w.run_id, w.signal,
                                             wake_payload(entry)))
                self._apply(plan_wake(state, now=now), now)
                woken.append(w.run_id)
        self.commits += 1
        return woken

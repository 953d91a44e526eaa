"""An in-memory store: the Store protocol with no disk and no threads.

For tests and virtual-time benchmarks. Everything happens on the event loop, so a
:class:`~stalwart.FakeClock` with ``autojump=True`` sees the loop idle only when every
run really waits on the clock — which makes hour-long backoffs and outages exact and
instant. It passes the same conformance suite as the real stores; it keeps nothing
after the process ends, so it is no journal for production.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import final

from ..errors import ConfigurationError, LeaseLostError, RunNotFoundError
from ..store._base import (
    TERMINAL_STATUSES,
    AppendResult,
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
from ..store._chain import GENESIS, chain, verify_events
from ..store._claims import plan_claim, ready_sort_key
from ..store._limits import (
    BucketDraw,
    BucketState,
    Reservation,
    plan_adjustment,
    plan_reservation,
)

__all__ = ["MemoryStore"]


@dataclass
class _Run:
    rec: RunRecord
    events: list[Event] = field(default_factory=list)
    digests: dict[int, str] = field(default_factory=dict)
    """Each event's digest by sequence number (see ``stalwart.store._chain``), and the
    chain's length and head as a run row keeps them: kept apart like the SQL stores'
    columns, so that a test can damage one without the other."""
    count: int = 0
    head: str = GENESIS
    wake_requested: bool = False
    order: int = 0


@dataclass
class _Signal:
    id: int
    run_id: str
    name: str
    payload: str
    consumed_step_id: str | None = None


@final
class MemoryStore:
    """The Store protocol in memory (see the module docstring)."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._signals: list[_Signal] = []
        self._order = 0
        self._workers: dict[str, WorkerRecord] = {}
        self._buckets: dict[str, BucketState] = {}
        self._slots: dict[str, dict[str, float]] = {}  # pool -> holder -> expires_at
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

    def _set(self, run: _Run, **changes: object) -> None:
        run.rec = replace(run.rec, **changes)  # type: ignore[arg-type]

    def _append_events(self, run: _Run, events: Sequence[NewEvent], now: float) -> None:
        for ev in events:
            if ev.kind == EventKind.STEP_COMPLETED and any(
                    e.kind == EventKind.STEP_COMPLETED and e.step_id == ev.step_id
                    for e in run.events):
                raise LeaseLostError(
                    f"run {run.rec.run_id}: step {ev.step_id} already has an outcome",
                    run_id=run.rec.run_id)
        first = run.count + 1
        digests = chain(run.head, run.rec.run_id, first, events, now)
        for i, (ev, digest) in enumerate(zip(events, digests, strict=True)):
            run.events.append(Event(run.rec.run_id, first + i, ev.kind, ev.step_id,
                                    ev.name, ev.payload, now))
            run.digests[first + i] = digest
        if digests:
            run.count, run.head = run.count + len(digests), digests[-1]
        self._set(run, updated_at=now)

    def _check(self, lease: Lease) -> _Run:
        run = self._runs.get(lease.run_id)
        if (run is None or run.rec.status != RunStatus.RUNNING
                or run.rec.lease_owner != lease.owner or run.rec.lease_token != lease.token):
            raise LeaseLostError(
                f"run {lease.run_id}: lease {lease.owner}#{lease.token} is no longer current",
                run_id=lease.run_id)
        return run

    def _wake(self, run_id: str | None, now: float) -> None:
        run = self._runs.get(run_id) if run_id else None
        if run is None:
            return
        if run.rec.status == RunStatus.WAITING:
            self._set(run, status=RunStatus.PENDING, wake_at=None, updated_at=now)
        run.wake_requested = True

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
        parent_run = self._check(parent) if parent is not None else None
        if parent_run is not None and parent_events:
            # Validate before changing anything, like a transaction would.
            for ev in parent_events:
                if ev.kind == EventKind.STEP_COMPLETED and any(
                        e.kind == EventKind.STEP_COMPLETED and e.step_id == ev.step_id
                        for e in parent_run.events):
                    raise LeaseLostError(f"run {parent_run.rec.run_id}: outcome exists")
        existing = self._runs.get(run_id)
        created = existing is None
        if existing is None:
            self._order += 1
            rec = RunRecord(
                run_id=run_id, workflow=workflow, workflow_ref=workflow_ref,
                status=RunStatus.PENDING, input=input, result=None, error=None,
                parent_run_id=parent.run_id if parent else None, parent_step_id=parent_step_id,
                created_at=now, updated_at=now, wake_at=None, lease_owner=None, lease_token=0,
                lease_expires_at=None, owner_host=None, owner_pid=None, cancel_requested=False)
            existing = self._runs[run_id] = _Run(rec, order=self._order)
            self._append_events(existing, [NewEvent(EventKind.RUN_CREATED, name=workflow,
                                                    payload=input), *events], now)
        if parent_run is not None and parent_events:
            self._append_events(parent_run, parent_events, now)
        self.commits += 1
        return existing.rec, created

    async def get_run(self, run_id: str) -> RunRecord | None:
        await self._yield()
        run = self._runs.get(run_id)
        return run.rec if run else None

    async def list_runs(self, *, status: RunStatus | None = None,
                        parent_run_id: str | None = None, limit: int = 100) -> list[RunRecord]:
        await self._yield()
        runs = [r for r in self._runs.values()
                if (status is None or r.rec.status == status)
                and (parent_run_id is None or r.rec.parent_run_id == parent_run_id)]
        runs.sort(key=lambda r: (r.rec.created_at, r.order), reverse=True)
        return [r.rec for r in runs[:limit]]

    async def load_events(self, run_id: str) -> list[Event]:
        await self._yield()
        run = self._runs.get(run_id)
        if run is None:
            return []
        rows = [(e.seq, str(e.kind), e.step_id, e.name, e.payload, e.created_at,
                 run.digests.get(e.seq)) for e in run.events]
        return verify_events(run_id, rows, count=run.count, head=run.head)

    async def run_ids(self) -> list[str]:
        """Every run id, oldest first (``stalwart doctor``)."""
        await self._yield()
        return [r.rec.run_id for r in sorted(self._runs.values(),
                                             key=lambda r: (r.rec.created_at, r.order))]

    # -- leases ----------------------------------------------------------------------

    def _ready(self, run: _Run, now: float) -> bool:
        r = run.rec
        return (r.status == RunStatus.PENDING
                or (r.status == RunStatus.RUNNING and r.lease_expires_at is not None
                    and r.lease_expires_at < now)
                or (r.status in (RunStatus.SLEEPING, RunStatus.WAITING)
                    and r.wake_at is not None and r.wake_at <= now))

    async def claim(self, owner: Owner, *, now: float, lease_seconds: float, limit: int,
                    run_id: str | None = None, steal: Sequence[tuple[str, str, int]] = (),
                    workflows: Sequence[str] | None = None) -> list[Lease]:
        await self._yield()
        if workflows is not None and not workflows:
            return []
        allowed = None if workflows is None else set(workflows)
        stolen: list[str] = []
        for sid, sowner, stoken in steal:
            if run_id is not None and sid != run_id:
                continue
            run = self._runs.get(sid)
            if (run is not None and run.rec.status == RunStatus.RUNNING
                    and run.rec.lease_owner == sowner and run.rec.lease_token == stoken
                    and (allowed is None or run.rec.workflow in allowed)):
                stolen.append(sid)
        pool = ([self._runs[run_id]] if run_id is not None and run_id in self._runs
                else [] if run_id is not None else list(self._runs.values()))
        ready = sorted((r for r in pool if self._ready(r, now)
                        and (allowed is None or r.rec.workflow in allowed)),
                       key=lambda r: ready_sort_key(r.rec, r.order))
        chosen = [self._runs[rid] for rid in plan_claim(
            stolen, [r.rec.run_id for r in ready], limit)]
        leases = []
        for run in chosen:
            token = run.rec.lease_token + 1
            self._set(run, status=RunStatus.RUNNING, lease_owner=owner.id, lease_token=token,
                      lease_expires_at=now + lease_seconds, owner_host=owner.host,
                      owner_pid=owner.pid, wake_at=None, updated_at=now)
            run.wake_requested = False
            self._append_events(run, [NewEvent(
                EventKind.RUN_CLAIMED, name=owner.id,
                payload=json.dumps({"host": owner.host, "pid": owner.pid}))], now)
            leases.append(Lease(run.rec.run_id, owner.id, token, now + lease_seconds))
        self.commits += 1
        return leases

    async def local_running(self, host: str) -> list[RunRecord]:
        await self._yield()
        return [r.rec for r in self._runs.values()
                if r.rec.status == RunStatus.RUNNING and r.rec.owner_host == host]

    async def renew(self, leases: Sequence[Lease], *, now: float,
                    lease_seconds: float) -> dict[str, Lease | None]:
        await self._yield()
        out: dict[str, Lease | None] = {}
        for lease in leases:
            try:
                run = self._check(lease)
            except LeaseLostError:
                out[lease.run_id] = None
                continue
            self._set(run, lease_expires_at=now + lease_seconds)
            out[lease.run_id] = replace(lease, expires_at=now + lease_seconds)
        self.commits += 1
        return out

    # -- the journal -----------------------------------------------------------------

    async def append(self, lease: Lease, events: Sequence[NewEvent], *, now: float,
                     finish: Finish | None = None) -> AppendResult:
        await self._yield()
        run = self._check(lease)
        self._append_events(run, events, now)
        cancel = run.rec.cancel_requested
        if finish is not None:
            status, wake_at = finish.status, finish.wake_at
            woken = status == RunStatus.WAITING and run.wake_requested
            if woken or (status == RunStatus.SLEEPING and cancel):
                status, wake_at = RunStatus.PENDING, None
            self._set(run, status=status, result=finish.result, error=finish.error,
                      wake_at=wake_at, lease_owner=None, lease_expires_at=None, updated_at=now)
            if status in TERMINAL_STATUSES:
                self._wake(run.rec.parent_run_id, now)
        self.commits += 1
        return AppendResult(cancel_requested=cancel)

    # -- signals, cancellation, redrive ------------------------------------------------

    async def send_signal(self, run_id: str, name: str, payload: str, *, now: float) -> RunRecord:
        await self._yield()
        run = self._runs.get(run_id)
        if run is None:
            raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
        self._signals.append(_Signal(len(self._signals) + 1, run_id, name, payload))
        self._wake(run_id, now)
        self.commits += 1
        return run.rec

    async def take_signal(self, lease: Lease, name: str, step_id: str, *,
                          now: float) -> str | None:
        await self._yield()
        run = self._check(lease)
        for sig in self._signals:
            if sig.run_id == lease.run_id and sig.name == name and sig.consumed_step_id is None:
                sig.consumed_step_id = step_id
                self._append_events(run, [NewEvent(EventKind.SIGNAL_RECEIVED, step_id, name,
                                                   sig.payload)], now)
                self.commits += 1
                return sig.payload
        return None

    def _cancel(self, run_id: str, now: float) -> None:
        run = self._runs.get(run_id)
        if run is None or run.rec.status in TERMINAL_STATUSES:
            return
        r = run.rec
        if (r.status == RunStatus.RUNNING and r.lease_expires_at is not None
                and r.lease_expires_at >= now):
            self._set(run, cancel_requested=True)
            run.wake_requested = True
        elif open_cleanups((e.kind, e.name) for e in run.events) > 0:
            # It cleans up when cancelled (a saga): woken, not ended, by the cancel.
            parked = r.status in (RunStatus.SLEEPING, RunStatus.WAITING)
            self._set(run, cancel_requested=True, wake_at=None, updated_at=now,
                      status=RunStatus.PENDING if parked else r.status)
            run.wake_requested = True
        else:
            self._set(run, status=RunStatus.CANCELLED, cancel_requested=True, lease_owner=None,
                      lease_expires_at=None, wake_at=None)
            self._append_events(run, [NewEvent(EventKind.RUN_CANCELLED)], now)
            self._wake(r.parent_run_id, now)
        for child in [c for c in self._runs.values() if c.rec.parent_run_id == run_id]:
            self._cancel(child.rec.run_id, now)

    async def request_cancel(self, run_id: str, *, now: float) -> RunRecord:
        await self._yield()
        if run_id not in self._runs:
            raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
        self._cancel(run_id, now)
        self.commits += 1
        return self._runs[run_id].rec

    async def redrive(self, run_id: str, *, now: float) -> RunRecord:
        await self._yield()
        run = self._runs.get(run_id)
        if run is None:
            raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
        if run.rec.status != RunStatus.DEAD_LETTERED:
            raise ConfigurationError(
                f"run {run_id} is {run.rec.status}, not dead_lettered; only dead-lettered "
                "runs can be retried", run_id=run_id)
        dead = [e for e in run.events if e.kind == EventKind.RUN_DEAD_LETTERED]
        self._append_events(run, [NewEvent(EventKind.RUN_REDRIVEN,
                                           step_id=dead[-1].step_id if dead else None)], now)
        self._set(run, status=RunStatus.PENDING, result=None, error=None,
                  cancel_requested=False, updated_at=now)
        self.commits += 1
        return run.rec

    async def next_wake_at(self) -> float | None:
        await self._yield()
        wakes = [r.rec.wake_at for r in self._runs.values()
                 if r.rec.status in (RunStatus.SLEEPING, RunStatus.WAITING)
                 and r.rec.wake_at is not None]
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

"""The store protocol: what the engine needs from a journal, and its records.

A store keeps four things: the run table (status, input, result, lease), the append-only
event journal of each run, pending signals, and links between parent and child runs.
Every write made on behalf of an executing run carries that run's :class:`Lease`; the
store rejects it with :class:`~stalwart.errors.LeaseLostError` when the lease is no
longer the current one (its owner was presumed dead and another worker took over). That
token check is the fencing that keeps two workers from both advancing one run.

Implementations: :class:`~stalwart.store.SQLiteStore` (embedded default) and
``PostgresStore``. Both pass ``tests/store/test_conformance.py``.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias, final, runtime_checkable

__all__ = [
    "TERMINAL_STATUSES",
    "ApprovalJournal",
    "Event",
    "EventKind",
    "Finish",
    "InheritsRetry",
    "Lease",
    "NewEvent",
    "Owner",
    "RunRecord",
    "RunStatus",
    "Store",
    "TransientRetry",
    "WorkerRecord",
]

SCHEMA_VERSION = 4
"""The SQLite journal's schema version, which this code reads and writes (PostgreSQL's
tables have their own, in ``_postgres_schema``).

2. Checksums: each event's digest chains to the one before it in its run, and the run
   row keeps the chain's head and digests of the run and its outcome (see ``_chain``).
   A writer migrates a journal of schema 1, hashing its events as they are then.
3. Blackboards (see ``_board``): ``board_entries`` and ``board_ops``. A writer adds them
   to a journal of schema 1 or 2 (runs may depend on them, so they are versioned).
4. Blobs (see ``_blobs``): ``events.payload_ref`` and the ``blobs`` table, large payloads
   stored once by content. A writer adds them; older events keep their payloads inline."""

APP_ID = "stalwart"

TransientRetry: TypeAlias = Callable[[int, BaseException], Awaitable[bool]]
"""How a store waits out a transient failure of its own transaction (a deadlock, a
serialization failure): called after attempt ``n`` (1-based) failed with the error, it
waits as long as it sees fit and returns ``True`` to make attempt ``n + 1``, or at once
``False`` to give up (the error then reaches the caller as a retryable
:class:`~stalwart.errors.StoreError`). A :class:`~stalwart.Runtime` builds one from
:class:`~stalwart.Retry` on its own clock; the store itself has no clock and no random
source, and imports nothing of the policies."""


@final
class Inherit(enum.Enum):
    """The type of :data:`INHERIT`."""

    INHERIT = "inherit"


INHERIT: Final = Inherit.INHERIT
"""A store argument left to whoever uses the store (a :class:`~stalwart.Runtime` gives
its own): not the same as ``None``, which disables."""


@runtime_checkable
class InheritsRetry(Protocol):
    """A store with retries of its own, which takes a runtime's :data:`TransientRetry`
    unless it was given one (or ``None``) when it was made."""

    def inherit_retry(self, retry: TransientRetry) -> None: ...


class RunStatus(enum.StrEnum):
    """Where a run is in its life."""

    PENDING = "pending"          # created or woken, waiting for a worker to claim it
    RUNNING = "running"          # a worker holds its lease and is executing it
    SLEEPING = "sleeping"        # parked on a durable timer until ``wake_at``
    WAITING = "waiting"          # parked on a signal or a child run (``wake_at``: timeout)
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"


TERMINAL_STATUSES = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.DEAD_LETTERED}
)


class EventKind(enum.StrEnum):
    """Kinds of journal events."""

    RUN_CREATED = "run_created"
    RUN_CLAIMED = "run_claimed"
    STEP_COMPLETED = "step_completed"
    STEP_FAILED = "step_failed"
    ATTEMPT_FAILED = "attempt_failed"
    TIMER_STARTED = "timer_started"
    SIGNAL_WAIT_STARTED = "signal_wait_started"
    SIGNAL_RECEIVED = "signal_received"
    SIGNAL_TIMED_OUT = "signal_timed_out"
    CHILD_STARTED = "child_started"
    RUN_SUSPENDED = "run_suspended"
    RUN_COMPLETED = "run_completed"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    RUN_DEAD_LETTERED = "run_dead_lettered"
    RUN_REDRIVEN = "run_redriven"
    CALL_TIMED = "call_timed"
    """A model or tool call's wall-clock start, duration and attempt count; journaled in
    the same append as the call's outcome (no extra commit), just before it."""
    CHECK_FAILED = "check_failed"
    """An output failed its outcome check (a semantic failure) but the step kept it (an
    agent's turn, answered by a re-ask); journaled with the step's outcome."""
    RUN_FORKED = "run_forked"
    """The run was forked from another run's journal (``stalwart runs fork``)."""
    RUN_RELEASED = "run_released"
    """The execution handed the run back unfinished (a worker's shutdown, Ctrl-C in
    ``stalwart run``, the journal failing under it); the next claim continues it."""
    STEP_TIMED = "step_timed"
    """A plain step's wall-clock start and duration, journaled in the same append as its
    outcome, for a step that took at least ``STEP_TIMED_AFTER`` seconds (a step without
    one took less)."""
    TOOL_CALL_REPAIRED = "tool_call_repaired"
    """A malformed tool call from the model (bad JSON, wrong arguments, an unknown tool)
    was sent back to it as a tool error; ``step_id`` is the model turn that made it."""
    TOOL_CALL_REFUSED = "tool_call_refused"
    """A tool call the model asked for was refused, not executed (its agent's
    :class:`~stalwart.Grant` does not cover the tool, or it is privileged and the
    context held untrusted content): the audit record, on the model turn that asked for
    it, with the untrusted sources; the model got a ``permission_denied`` tool error."""
    TOOL_CALL_APPROVAL = "tool_call_approval"
    """A privileged tool call with untrusted content in the context was held for a
    human's approval of its exact arguments; the record of the decision (approved or
    not), with the untrusted sources, on the model turn that asked for it."""
    CONTEXT_ORIGINS = "context_origins"
    """Where the messages an agent's model turn saw came from (those not journaled with
    an earlier turn): their index, role, origin and whether the agent trusts it;
    journaled in the same append as the turn's outcome."""
    CONTEXT_WINDOW = "context_window"
    """A context window's policy acted before a model call (evicted, stubbed, expired,
    summarized, paged or rejected messages); ``step_id`` is the call's step, ``name``
    the agent, the payload what moved and why (see ``stalwart.memory``)."""


STEP_TIMED_AFTER = 0.002
"""Seconds from which a plain step's timing is journaled (``step_timed``): below it, a
step's duration shows as under this, at no cost to the many trivial steps."""


CLEANUP_OPENED = "stalwart.cleanup_opened"
CLEANUP_CLOSED = "stalwart.cleanup_closed"
"""The names of the steps that open and close a run's cleanup scope
(``ctx.cleanup_on_cancel``, a saga). A run holding an open one is not cancelled by the
store while it does not execute: ``request_cancel`` wakes it instead, so that its code
can clean up (see :func:`open_cleanups`)."""


def open_cleanups(events: Iterable[tuple[EventKind | str, str | None]]) -> int:
    """How many cleanup scopes a journal leaves open, from its ``(kind, name)`` pairs:
    completed ``stalwart.cleanup_opened`` steps less completed ``..._closed`` ones.

    The stores count the same in SQL (``request_cancel``) and pass the count to the
    planner (``_runs.plan_cancel``): a run with a positive count has its cancel
    delivered to its code rather than applied by the store."""
    count = 0
    for kind, name in events:
        if kind == EventKind.STEP_COMPLETED:
            if name == CLEANUP_OPENED:
                count += 1
            elif name == CLEANUP_CLOSED:
                count -= 1
    return count


@final
@dataclass(frozen=True, slots=True)
class Owner:
    """Who executes runs: a runtime instance, on a host, in a process."""

    id: str
    host: str
    pid: int


@final
@dataclass(frozen=True, slots=True)
class Lease:
    """The right to execute one run, until ``expires_at``; ``token`` fences stale owners."""

    run_id: str
    owner: str
    token: int
    expires_at: float


@final
@dataclass(frozen=True, slots=True)
class RunRecord:
    """One row of the run table."""

    run_id: str
    workflow: str
    workflow_ref: str | None
    status: RunStatus
    input: str
    result: str | None
    error: str | None
    parent_run_id: str | None
    parent_step_id: str | None
    created_at: float
    updated_at: float
    wake_at: float | None
    lease_owner: str | None
    lease_token: int
    lease_expires_at: float | None
    owner_host: str | None
    owner_pid: int | None
    cancel_requested: bool

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@final
@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; the store assigns its sequence number and time."""

    kind: EventKind
    step_id: str | None = None
    name: str | None = None
    payload: str | None = None


@final
@dataclass(frozen=True, slots=True)
class Event:
    """A journaled event."""

    run_id: str
    seq: int
    kind: EventKind
    step_id: str | None
    name: str | None
    payload: str | None
    created_at: float


@final
@dataclass(frozen=True, slots=True)
class ApprovalJournal:
    """What a listing of approvals reads of one run (:meth:`Store.approval_journals`):
    its approval events and the decisions sent to it and not yet taken."""

    run_id: str
    events: tuple[Event, ...]
    """The run's approval events (requests, decisions, timeouts: see
    ``stalwart.store._approvals``), in journal order, payloads resolved."""
    queued: tuple[str, ...]
    """The names of the decision signals sent to the run and not yet taken, oldest
    first."""


@final
@dataclass(frozen=True, slots=True)
class Finish:
    """How an append ends the execution it belongs to (releasing the lease).

    ``status`` is terminal (with ``result`` or ``error``) or a parked state
    (``SLEEPING``/``WAITING`` with ``wake_at``), or ``PENDING`` to hand the run back.
    """

    status: RunStatus
    result: str | None = None
    error: str | None = None
    wake_at: float | None = None


@final
@dataclass(frozen=True, slots=True)
class AppendResult:
    """What the store learned while appending: whether cancellation was requested."""

    cancel_requested: bool


@final
@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """One row of the workers registry: a runtime that executes runs, as it last reported.

    A worker writes its row when it starts, at every heartbeat and when it stops cleanly
    (``stopped_at``). One whose heartbeats stopped without a clean stop died (SIGKILL, a
    lost machine or network); its leases expire and other workers take its runs over.
    """

    worker_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    concurrency: int
    in_flight: int
    lease_seconds: float
    pools: tuple[str, ...] = ()
    stopped_at: float | None = None

    def alive(self, now: float) -> bool:
        """Not stopped, and heard from within one lease period (the leases' own rule)."""
        return self.stopped_at is None and now - self.heartbeat_at <= self.lease_seconds


@runtime_checkable
class Store(Protocol):
    """The journal and run table behind a runtime."""

    @property
    def url(self) -> str:
        """A printable location of the store (no secrets)."""
        ...

    async def open(self) -> None:
        """Open (and create or check the schema of) the store."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...

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
        """Create a pending run, or return the existing one with that id (``created=False``).

        With ``parent``, the child link and ``parent_events`` are written in the same
        transaction, fenced by the parent's lease. ``events`` are journaled in the new
        run after its ``run_created``, in the same transaction (a fork's copied prefix),
        so no worker can claim the run before they are there.
        """
        ...

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        parent_run_id: str | None = None,
        limit: int = 100,
        workflow: str | None = None,
        created_before: float | None = None,
        created_since: float | None = None,
    ) -> list[RunRecord]:
        """Runs, newest first; only those of ``workflow``, created before
        ``created_before`` (the cursor of the next page) or since ``created_since``, when
        given."""
        ...

    async def load_events(self, run_id: str) -> list[Event]: ...

    async def approval_journals(self, run_ids: Sequence[str]) -> list[ApprovalJournal]:
        """The approval events and queued decisions of each of ``run_ids`` that has
        approval events, once each, in the order given, read through the store's index of them:
        the cost is that of those events, not of the runs' journals.

        A view: each event read is checked against its own digest, the chain of the
        whole journal is not (:meth:`load_events` checks it; acting on an approval
        loads the journal). A decision taken while this reads is in its events or in
        its queue, never in neither (the queue is read first).

        Raises:
            StoreCorruptedError: an event or its blob does not match its checksum.
        """
        ...

    async def claim(
        self,
        owner: Owner,
        *,
        now: float,
        lease_seconds: float,
        limit: int,
        run_id: str | None = None,
        steal: Sequence[tuple[str, str, int]] = (),
        workflows: Sequence[str] | None = None,
    ) -> list[Lease]:
        """Claim up to ``limit`` runs that are ready: pending, parked and due, or running
        with an expired lease. ``run_id`` restricts the claim to that run; ``workflows``
        to runs of those workflows (the ones this worker can execute). ``steal`` lists
        ``(run_id, owner, token)`` of runs whose owner is known dead; they are claimed
        whatever their lease expiry, if still held by that owner and token."""
        ...

    async def local_running(self, host: str) -> list[RunRecord]:
        """Running runs whose lease owner is a process on ``host``."""
        ...

    async def renew(
        self, leases: Sequence[Lease], *, now: float, lease_seconds: float
    ) -> dict[str, Lease | None]:
        """Extend leases; ``None`` for each one that was lost."""
        ...

    async def append(
        self,
        lease: Lease,
        events: Sequence[NewEvent],
        *,
        now: float,
        finish: Finish | None = None,
    ) -> AppendResult:
        """Append events to the leased run, atomically; with ``finish``, end this execution.

        Raises:
            LeaseLostError: the lease is not the run's current one; nothing was written.
        """
        ...

    async def send_signal(self, run_id: str, name: str, payload: str, *, now: float) -> RunRecord:
        """Keep a signal for the run (delivered to the next matching wait) and wake it."""
        ...

    async def take_signal(
        self, lease: Lease, name: str, step_id: str, *, now: float
    ) -> str | None:
        """Consume the oldest pending signal ``name`` and journal it at ``step_id``."""
        ...

    async def pending_signals(self, run_id: str) -> list[tuple[str, str]]:
        """The run's signals sent and not yet taken, oldest first: ``(name, payload)``."""
        ...

    async def request_cancel(self, run_id: str, *, now: float) -> RunRecord:
        """Cancel the run and its unfinished children: at once if no worker holds it,
        else by flagging it for its worker to observe at the next step."""
        ...

    async def next_wake_at(self) -> float | None:
        """The earliest ``wake_at`` of any parked run."""
        ...

    async def redrive(self, run_id: str, *, now: float) -> RunRecord:
        """Put a dead-lettered run back to pending, journaling ``run_redriven`` with the
        step id that dead-lettered it (so that step runs again with fresh attempts).

        Raises:
            RunNotFoundError: no such run.
            ConfigurationError: the run is not dead-lettered.
        """
        ...

    # -- the workers registry (operational state: no run depends on it) --------------

    async def save_worker(self, worker: WorkerRecord) -> None:
        """Insert or replace ``worker``'s row (at start, at each heartbeat, at a stop)."""
        ...

    async def list_workers(self, *, since: float) -> list[WorkerRecord]:
        """Workers heard from (a heartbeat or a stop) at or after ``since``, in the order
        they started."""
        ...

    async def forget_workers(self, *, before: float) -> int:
        """Delete the rows of workers last heard from before ``before``; how many went."""
        ...

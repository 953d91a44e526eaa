"""The embedded journal: one SQLite file, zero set-up.

Why our own code rather than an ORM: the journal's guarantees are its transactions. Each
write that advances a run is one ``BEGIN IMMEDIATE`` transaction that first checks the
run's lease token (fencing), then appends events and updates the run row. Appends from
many concurrently executing runs — and every other write (starting runs, claims,
signals) — are *group-committed*: they queue while the previous commit is in flight and
the next commit carries all of them (each in its own SAVEPOINT, so one fenced-out or
failing writer does not fail its neighbours). One execution's step is durable
before that execution moves on; concurrent executions share the cost of a commit.

All SQLite work happens on one dedicated thread that owns the connection; the event loop
never blocks on disk. Several processes may open one file (WAL mode, a busy timeout,
IMMEDIATE transactions); leases keep them from executing the same run.

Durability: ``synchronous=FULL`` by default — a committed step survives a process crash
*and* a power loss or OS crash. ``synchronous="NORMAL"`` (in WAL mode) survives a process
crash, but the last commits before a power loss may be rolled back (never corrupted); a
step lost that way runs again on resume, with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar, final

from ..errors import (
    ConfigurationError,
    LeaseLostError,
    NotAStalwartStoreError,
    StoreCorruptedError,
    StoreError,
)
from . import _sqlite_schema as schema
from ._approvals import ApprovalRow, approval_journals, select_events_sql, select_queued_sql
from ._base import (
    CLEANUP_CLOSED,
    CLEANUP_OPENED,
    SCHEMA_VERSION,
    AppendResult,
    ApprovalJournal,
    Event,
    Finish,
    Lease,
    NewEvent,
    Owner,
    RunRecord,
    RunStatus,
    WorkerRecord,
    open_cleanups,
)
from ._blobs import resolve, split
from ._board import (
    ROW_COLUMNS,
    WATCH_COLUMNS,
    BoardEntry,
    BoardOp,
    BoardWatch,
    choose,
    entry_from_row,
    entry_row,
    wake_action,
    wake_payload,
    watch_from_row,
    watch_row,
    watching,
)
from ._board import plan as plan_board
from ._chain import RUN_COLUMNS, run_record, verify_events
from ._limits import (
    BucketDraw,
    BucketState,
    LimitsView,
    Reservation,
    limits_view,
    plan_adjustment,
    plan_reservation,
)
from ._runs import (
    READY_ORDER_SQL,
    STATE_COLUMNS,
    EventRow,
    Plan,
    RunState,
    can_steal,
    check_lease,
    claim_order,
    plan_append,
    plan_cancel,
    plan_claim,
    plan_create,
    plan_redrive,
    plan_renew,
    plan_take_signal,
    plan_wake,
    ready_sql,
    require,
    state_from_row,
)

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_WORKER_COLUMNS = ("worker_id, host, pid, started_at, heartbeat_at, concurrency, in_flight, "
                   "lease_seconds, pools, stopped_at")
_SELECT_RUN = f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?"
_CHUNK = 500
"""Run ids per statement where a query takes a list of them (SQLite before 3.32 allows
999 parameters)."""

Access = Literal["write", "client", "read"]
"""How a store uses its file: ``write`` opens it read-write (creating or migrating the
journal); ``read`` only ever reads (``mode=ro``: no write, no checkpoint, not even on
an error path); ``client`` reads read-only until its first write, which reopens the
file read-write (a :class:`~stalwart.Runtime` with ``worker=False``)."""


def default_path() -> Path:
    """``$STALWART_STORE`` if it names a file, else ``./.stalwart/stalwart.db``."""
    env = os.environ.get("STALWART_STORE")
    if env and "://" not in env:
        return Path(env)
    return Path(".stalwart") / "stalwart.db"


@final
class SQLiteStore:
    """The embedded journal in one SQLite file.

    Args:
        path: the database file; created with its folder if missing. ``":memory:"``
            keeps everything in memory (tests).
        synchronous: ``"FULL"`` (default: durable across power loss) or ``"NORMAL"``
            (durable across process crashes; see the module docstring).
        busy_timeout: seconds to wait for another process's write transaction.
        access: ``"write"`` (default), ``"client"`` or ``"read"`` (see :data:`Access`).
            Only a store that writes creates a journal, in a missing or empty (0-byte)
            file, or migrates an older one; readers refuse both with a typed error.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout: float = 10.0,
        access: Access = "write",
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigurationError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        if access not in ("write", "client", "read"):
            raise ConfigurationError(f"access must be write, client or read, not {access!r}")
        self._path = str(path) if path is not None else str(default_path())
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._access: Access = "write" if self._path == ":memory:" else access
        self._writable = self._access == "write"
        """Whether the connection is read-write (a client's becomes so at its first
        write)."""
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # queued writes: (op, is_append, future); one _flush commits them together
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], bool,
                                  asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._verifier: schema.Verifier | None = None
        self.commits = 0
        """How many write transactions committed (for tests and benchmarks)."""

    @property
    def url(self) -> str:
        return f"sqlite:///{self._path}"

    @property
    def path(self) -> str:
        return self._path

    @property
    def access(self) -> Access:
        return self._access

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stalwart-sqlite")
        try:
            await self._call(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open_sync(self) -> None:
        path = self._path
        state = "missing" if path == ":memory:" else schema.file_state(path)
        if state != "sqlite":
            if self._access == "read":
                raise NotAStalwartStoreError(self._absent_message(state))
            if self._access == "client":
                return  # nothing to read yet; the first write creates the journal
            self._conn = self._create(state)
            return
        schema.refuse_damaged_wal(path)
        # Whatever the access, a file is first looked at read-only: a foreign or damaged
        # one is refused without a byte of it (or of its WAL) written.
        ro = schema.connect(path, read_only=True, busy_timeout=self._busy_timeout)
        try:
            found = schema.inspect(ro, path)
            if found != SCHEMA_VERSION and not (
                    self._access == "write" and schema.MIGRATABLE_FROM <= found
                    < SCHEMA_VERSION):
                raise schema.version_error(path, found, writer=self._access == "write")
        except BaseException:
            ro.close()
            raise
        if self._access != "write":
            self._conn = ro
            return
        ro.close()
        self._conn = self._open_writer(migrate=found != SCHEMA_VERSION)
        self._verify()

    def _verify(self) -> None:
        """A writer: check the whole file in the background (see ``Verifier``)."""
        if self._verifier is None and self._path != ":memory:":
            self._verifier = schema.Verifier(self._path, busy_timeout=self._busy_timeout)

    async def verified(self) -> StoreCorruptedError | None:
        """Wait for the background check of a store that writes; what it found."""
        verifier = self._verifier
        if verifier is None:
            return None
        await asyncio.get_running_loop().run_in_executor(None, verifier.done.wait)
        return verifier.damage

    def _intact(self) -> None:
        """Refuse to go on with a journal the background check found damaged."""
        if self._verifier is not None and self._verifier.damage is not None:
            raise self._verifier.damage

    def _absent_message(self, state: str) -> str:
        return (f"no stalwart journal at {self._path} ("
                + ("the file is empty" if state == "empty" else "nothing has been written there")
                + "; it was left as it was)")

    def _create(self, state: str) -> sqlite3.Connection:
        if state == "missing" and self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = schema.connect(self._path, read_only=False, busy_timeout=self._busy_timeout)
        try:
            self._unlocked(lambda: schema.create(conn))
            # Another process may have created it meanwhile: check what is there now.
            schema.inspect(conn, self._path)
            self._unlocked(lambda: self._set_pragmas(conn))
        except schema.ERRORS as exc:
            conn.close()
            raise schema.store_error(exc, self._path, "cannot create a journal in") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _unlocked(self, fn: Callable[[], object]) -> None:
        """``fn()``, waiting out another writer creating the journal at the same moment:
        switching a new file to WAL takes a lock SQLite does not wait for (busy_timeout
        does not apply), so two clients creating one journal at once saw "database is
        locked" (a race test caught it about one run in eight)."""
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.005
        while True:
            try:
                fn()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _open_writer(self, *, migrate: bool) -> sqlite3.Connection:
        conn = schema.connect(self._path, read_only=False, busy_timeout=self._busy_timeout)
        try:
            if migrate:
                schema.migrate(conn, self._path)
            else:
                schema.ensure_operational(conn)
            schema.add_indexes(conn)
            self._set_pragmas(conn)
        except schema.ERRORS as exc:
            conn.close()
            raise schema.store_error(exc, self._path, "cannot open") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _set_pragmas(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")

    def _become_writer(self) -> None:
        """A client's first write: reopen the file read-write (creating the journal in a
        missing or empty file). Runs on the store's thread."""
        if self._writable:
            return
        if self._access == "read":
            raise StoreError(f"{self._path} was opened to read only; nothing was written")
        old, self._conn = self._conn, None
        if old is not None:
            old.close()  # read-only: closing it checkpoints nothing
        state = schema.file_state(self._path)
        if state == "sqlite":
            schema.refuse_damaged_wal(self._path)
            ro = schema.connect(self._path, read_only=True, busy_timeout=self._busy_timeout)
            try:
                found = schema.inspect(ro, self._path)
            finally:
                ro.close()
            if found != SCHEMA_VERSION and not (
                    schema.MIGRATABLE_FROM <= found < SCHEMA_VERSION):
                raise schema.version_error(self._path, found, writer=True)
            self._conn = self._open_writer(migrate=found != SCHEMA_VERSION)
            self._verify()
        else:
            self._conn = self._create(state)
        self._writable = True

    async def close(self) -> None:
        if self._executor is None:
            return
        conn = self._conn
        verifier, self._verifier = self._verifier, None
        if verifier is not None:
            await asyncio.get_running_loop().run_in_executor(None, verifier.stop)
        if conn is not None:
            await self._call(conn.close)
        self._conn = None
        self._executor.shutdown(wait=True)
        self._executor = None

    # -- plumbing --------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("the store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._mapped, fn, *args)

    def _mapped(self, fn: Callable[..., T], *args: Any) -> T:
        self._intact()
        try:
            return fn(*args)
        except schema.ERRORS as exc:
            raise schema.store_error(exc, self._path, "cannot read") from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None and self._executor is not None and not self._writable:
            self._open_sync()  # a client that found no journal: is there one now?
        if self._conn is None:
            if self._executor is not None:
                raise NotAStalwartStoreError(self._absent_message(
                    schema.file_state(self._path)))
            raise StoreError("the store is not open")
        return self._conn

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a write transaction; returns once it is committed. Concurrent
        writes and appends share the commit (group commit), each in its own savepoint, so
        an exception from ``fn`` undoes only ``fn``'s changes and is raised here."""
        return await self._enqueue(fn, is_append=False)  # type: ignore[no-any-return]

    def _enqueue(self, op: Callable[[sqlite3.Connection], Any], *,
                 is_append: bool) -> asyncio.Future[Any]:
        if self._executor is None:
            raise StoreError("the store is not open")
        if self._access == "read":
            raise StoreError(f"{self._path} was opened to read only; nothing was written")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._pending.append((op, is_append, fut))
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            self._executor.submit(self._flush, loop)
        return fut

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
        def op(conn: sqlite3.Connection) -> tuple[RunRecord, bool]:
            parent_state = None
            if parent is not None:
                parent_state = check_lease(_state(conn, parent.run_id), parent)
            existing = _find(conn, RUN_COLUMNS, run_id)
            if existing is None:
                new = plan_create(run_id=run_id, workflow=workflow, input=input, now=now,
                                  workflow_ref=workflow_ref,
                                  parent_run_id=parent.run_id if parent else None,
                                  parent_step_id=parent_step_id, events=events)
                rec = new.record
                conn.execute(
                    "INSERT INTO runs (run_id, workflow, workflow_ref, status, input, "
                    "parent_run_id, parent_step_id, created_at, updated_at, event_count, "
                    "event_head, run_digest, outcome_digest) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, workflow, workflow_ref, str(rec.status), input, rec.parent_run_id,
                     parent_step_id, now, now, new.state.event_count, new.state.event_head,
                     new.run_digest, new.outcome_digest))
                _insert_events(conn, new.events)
            if parent is not None and parent_state is not None and parent_events:
                self._write_plan(conn, plan_append(parent_state, parent, parent_events,
                                                   now=now), now)
            return (run_record(existing), False) if existing is not None else (rec, True)

        return await self._write(op)

    async def get_run(self, run_id: str) -> RunRecord | None:
        def op() -> RunRecord | None:
            row = _find(self._db(), RUN_COLUMNS, run_id)
            return run_record(row) if row else None

        return await self._call(op)

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
        clauses: list[str] = []
        args: list[object] = []
        for column, cmp, value in (("workflow", "=", workflow),
                                   ("created_at", "<", created_before),
                                   ("created_at", ">=", created_since)):
            if value is not None:
                clauses.append(f"{column} {cmp} ?")
                args.append(value)
        if status is not None:
            clauses.append("status = ?")
            args.append(str(status))
        if parent_run_id is not None:
            clauses.append("parent_run_id = ?")
            args.append(parent_run_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""

        def op() -> list[RunRecord]:
            rows = self._db().execute(
                f"SELECT {RUN_COLUMNS} FROM runs {where} "
                "ORDER BY created_at DESC, rowid DESC LIMIT ?", (*args, limit)).fetchall()
            return [run_record(r) for r in rows]

        return await self._call(op)

    async def load_events(self, run_id: str) -> list[Event]:
        def op() -> list[Event]:
            # One statement, one snapshot: the run row's count and head with its events.
            rows = self._db().execute(
                "SELECT r.event_count, r.event_head, e.seq, e.kind, e.step_id, e.name, "
                "e.payload, e.created_at, e.digest, e.payload_ref, b.content FROM runs r "
                "LEFT JOIN events e ON e.run_id = r.run_id LEFT JOIN blobs b "
                "ON b.hash = e.payload_ref WHERE r.run_id = ? ORDER BY e.seq",
                (run_id,)).fetchall()
            if not rows:
                return []
            events = resolve(run_id, [tuple(r[2:]) for r in rows if r[2] is not None])
            return verify_events(run_id, events, count=rows[0][0], head=rows[0][1])

        return await self._call(op)

    async def approval_journals(self, run_ids: Sequence[str]) -> list[ApprovalJournal]:
        def op() -> list[ApprovalJournal]:
            conn = self._db()
            # Without statistics SQLite prefers the primary key (every event of the run)
            # to the partial index, so the index is named; a journal no writer has
            # opened since it was added is read without it (the same rows, slower).
            indexed = (f"INDEXED BY {schema.APPROVALS_INDEX}" if conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
                (schema.APPROVALS_INDEX,)).fetchone() else "")
            rows: list[ApprovalRow] = []
            queued: list[tuple[str, str]] = []
            for start in range(0, len(run_ids), _CHUNK):
                chunk = list(run_ids[start:start + _CHUNK])
                ids = f"IN ({', '.join('?' * len(chunk))})"
                queued += conn.execute(select_queued_sql(signals="signals", run_ids=ids),
                                       chunk).fetchall()
                rows += conn.execute(select_events_sql(events="events", blobs="blobs",
                                                       run_ids=ids, indexed=indexed),
                                     chunk).fetchall()
            return approval_journals(run_ids, rows, queued)

        return await self._call(op)

    async def run_ids(self) -> list[str]:
        """Every run id the journal mentions, in the run table or in events (for
        ``stalwart doctor``: events whose run row is gone are damage too)."""
        def op() -> list[str]:
            rows = self._db().execute(
                "SELECT run_id FROM (SELECT run_id, created_at, rowid AS o FROM runs "
                "UNION ALL SELECT DISTINCT run_id, NULL, NULL FROM events "
                "WHERE run_id NOT IN (SELECT run_id FROM runs)) ORDER BY created_at, o"
            ).fetchall()
            return [r[0] for r in rows]

        return await self._call(op)

    # -- leases ----------------------------------------------------------------------

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
        if workflows is not None and not workflows:
            return []

        def op(conn: sqlite3.Connection) -> list[Lease]:
            states: dict[str, RunState] = {}
            stolen: dict[str, tuple[str, int]] = {}
            for sid, sowner, stoken in steal:
                if len(stolen) >= limit or (run_id is not None and sid != run_id):
                    continue
                row = conn.execute(f"SELECT {STATE_COLUMNS}, workflow FROM runs "
                                   "WHERE run_id = ?", (sid,)).fetchone()
                if row and (workflows is None or row[-1] in workflows):
                    states[sid] = state_from_row(row)
                    if can_steal(states[sid], sowner, stoken):
                        stolen.setdefault(sid, (sowner, stoken))
            ready: list[str] = []
            if len(stolen) < limit:
                for row in conn.execute(*self._ready_query(
                        now, limit - len(stolen), run_id, workflows, list(stolen))):
                    states[row[0]] = state_from_row(row)
                    ready.append(row[0])
            leases = []
            for rid in claim_order(list(stolen), ready, limit):
                plan = plan_claim(states[rid], owner, now=now, lease_seconds=lease_seconds,
                                  steal=stolen.get(rid))
                if plan is None:  # the index said ready, the row says otherwise
                    raise _index_damage(rid)
                self._write_plan(conn, plan, now)
                leases.append(Lease(rid, owner.id, plan.after.lease_token,
                                    now + lease_seconds))
            return leases

        return await self._write(op)

    @staticmethod
    def _ready_query(now: float, limit: int, run_id: str | None,
                     workflows: Sequence[str] | None,
                     exclude: Sequence[str]) -> tuple[str, dict[str, Any]]:
        """Ready runs' states, in claim order (see _runs)."""
        where = ready_sql(":now")
        params: dict[str, Any] = {"now": now, "limit": limit}
        if workflows is not None:
            where += f" AND workflow IN ({', '.join(f':wf{i}' for i in range(len(workflows)))})"
            params.update({f"wf{i}": w for i, w in enumerate(workflows)})
        if exclude:
            where += f" AND run_id NOT IN ({', '.join(f':x{i}' for i in range(len(exclude)))})"
            params.update({f"x{i}": x for i, x in enumerate(exclude)})
        if run_id is not None:
            where += " AND run_id = :run_id"
            params["run_id"] = run_id
        return (f"SELECT {STATE_COLUMNS} FROM runs WHERE {where} "
                f"ORDER BY {READY_ORDER_SQL}, rowid LIMIT :limit", params)

    async def local_running(self, host: str) -> list[RunRecord]:
        def op() -> list[RunRecord]:
            rows = self._db().execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running' AND owner_host = ? "
                "ORDER BY created_at", (host,)).fetchall()
            return [run_record(r) for r in rows]

        return await self._call(op)

    async def renew(
        self, leases: Sequence[Lease], *, now: float, lease_seconds: float
    ) -> dict[str, Lease | None]:
        def op(conn: sqlite3.Connection) -> dict[str, Lease | None]:
            out: dict[str, Lease | None] = {}
            for lease in leases:
                plan = plan_renew(_state(conn, lease.run_id), lease, now=now,
                                  lease_seconds=lease_seconds)
                if plan is not None:
                    self._write_plan(conn, plan, now)
                out[lease.run_id] = (None if plan is None else Lease(
                    lease.run_id, lease.owner, lease.token, now + lease_seconds))
            return out

        return await self._write(op)

    # -- the journal -----------------------------------------------------------------

    def _write_plan(self, conn: sqlite3.Connection, plan: Plan, now: float) -> None:
        """Write what ``plan`` says (its run's row is the one this transaction read), and
        wake the run it names."""
        if plan.events:
            _insert_events(conn, plan.events)
        changes = plan.changes()
        if changes:
            conn.execute(_update_sql(tuple(changes)), (*changes.values(), plan.after.run_id))
        if plan.wake is not None and (woken := _state(conn, plan.wake)) is not None:
            self._write_plan(conn, plan_wake(woken, now=now), now)

    async def append(
        self,
        lease: Lease,
        events: Sequence[NewEvent],
        *,
        now: float,
        finish: Finish | None = None,
    ) -> AppendResult:
        def op(conn: sqlite3.Connection) -> AppendResult:
            plan = plan_append(_state(conn, lease.run_id), lease, events, now=now,
                               finish=finish)
            try:
                self._write_plan(conn, plan, now)
            except sqlite3.IntegrityError as exc:
                raise LeaseLostError(
                    f"run {lease.run_id}: a step outcome was already recorded ({exc})",
                    run_id=lease.run_id) from exc
            return AppendResult(cancel_requested=plan.before.cancel_requested)

        return await self._enqueue(op, is_append=True)  # type: ignore[no-any-return]

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._flush_scheduled = False
        if not batch:
            return
        outcomes: list[Any] = []
        try:
            self._intact()
            self._become_writer()
            conn = self._db()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise schema.store_error(exc, self._path, "cannot start a write on") from exc
            try:
                for op, is_append, _ in batch:
                    conn.execute("SAVEPOINT one")
                    try:
                        outcomes.append(op(conn))
                        conn.execute("RELEASE one")
                    except Exception as exc:
                        # a fenced-out append fails alone; any other append failure
                        # (disk, corruption) fails the batch; a write's error is its own
                        if is_append and not isinstance(exc, LeaseLostError):
                            raise
                        conn.execute("ROLLBACK TO one")
                        conn.execute("RELEASE one")
                        outcomes.append(exc if not isinstance(exc, schema.ERRORS) else
                                        schema.store_error(exc, self._path, "cannot write to"))
                conn.execute("COMMIT")
                self.commits += 1
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException as exc:
            err: BaseException
            if isinstance(exc, StoreError):
                err = exc
            elif isinstance(exc, schema.ERRORS):
                err = schema.store_error(exc, self._path, "cannot write to")
            else:
                err = StoreError(f"journal write failed: {exc}", retryable=True)
                err.__cause__ = exc
            outcomes = [err] * len(batch)
        # One wake-up of the event loop for the whole batch, not one per waiting write.
        loop.call_soon_threadsafe(
            _settle_all, [(fut, outcome) for (*_, fut), outcome in zip(batch, outcomes,
                                                                       strict=True)])

    # -- signals and cancellation ----------------------------------------------------

    async def send_signal(self, run_id: str, name: str, payload: str, *, now: float) -> RunRecord:
        def op(conn: sqlite3.Connection) -> RunRecord:
            plan = plan_wake(require(_state(conn, run_id), run_id), now=now)
            conn.execute(
                "INSERT INTO signals (run_id, name, payload, created_at) VALUES (?, ?, ?, ?)",
                (run_id, name, payload, now))
            self._write_plan(conn, plan, now)
            return run_record(conn.execute(_SELECT_RUN, (run_id,)).fetchone())

        return await self._write(op)

    async def pending_signals(self, run_id: str) -> list[tuple[str, str]]:
        def op() -> list[tuple[str, str]]:
            rows = self._db().execute(
                "SELECT name, payload FROM signals WHERE run_id = ? AND "
                "consumed_step_id IS NULL ORDER BY id", (run_id,)).fetchall()
            return [(str(r[0]), str(r[1])) for r in rows]

        return await self._call(op)

    async def take_signal(
        self, lease: Lease, name: str, step_id: str, *, now: float
    ) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            state = check_lease(_state(conn, lease.run_id), lease)
            row = conn.execute(
                "SELECT id, payload FROM signals WHERE run_id = ? AND name = ? AND "
                "consumed_step_id IS NULL ORDER BY id LIMIT 1", (lease.run_id, name)).fetchone()
            if row is None:
                return None
            plan = plan_take_signal(state, lease, name=name, step_id=step_id,
                                    payload=row[1], now=now)
            conn.execute("UPDATE signals SET consumed_step_id = ? WHERE id = ?",
                         (step_id, row[0]))
            self._write_plan(conn, plan, now)
            return str(row[1])

        return await self._write(op)

    async def request_cancel(self, run_id: str, *, now: float) -> RunRecord:
        def cancel(conn: sqlite3.Connection, rid: str) -> None:
            state = _state(conn, rid)
            if state is None:
                return
            plan = plan_cancel(state, now=now, cleanups=0 if state.is_terminal else
                               open_cleanups(conn.execute(
                                   "SELECT kind, name FROM events WHERE run_id = ? AND kind "
                                   "= 'step_completed' AND name IN (?, ?)",
                                   (rid, CLEANUP_OPENED, CLEANUP_CLOSED)).fetchall()))
            self._write_plan(conn, plan, now)
            if plan.cascade:
                for (child,) in conn.execute("SELECT run_id FROM runs WHERE parent_run_id = ? "
                                             "ORDER BY created_at, rowid", (rid,)).fetchall():
                    cancel(conn, child)

        def op(conn: sqlite3.Connection) -> RunRecord:
            require(_state(conn, run_id), run_id)
            cancel(conn, run_id)
            return run_record(conn.execute(_SELECT_RUN, (run_id,)).fetchone())

        return await self._write(op)

    async def redrive(self, run_id: str, *, now: float) -> RunRecord:
        def op(conn: sqlite3.Connection) -> RunRecord:
            state = require(_state(conn, run_id), run_id)
            last = conn.execute(
                "SELECT step_id FROM events WHERE run_id = ? AND kind = 'run_dead_lettered' "
                "ORDER BY seq DESC LIMIT 1", (run_id,)).fetchone()
            self._write_plan(conn, plan_redrive(state, last[0] if last else None, now=now),
                             now)
            return run_record(conn.execute(_SELECT_RUN, (run_id,)).fetchone())

        return await self._write(op)

    async def next_wake_at(self) -> float | None:
        def op() -> float | None:
            row = self._db().execute(
                "SELECT MIN(wake_at) FROM runs WHERE status IN ('sleeping', 'waiting') "
                "AND wake_at IS NOT NULL").fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._call(op)


    # -- the workers registry --------------------------------------------------------

    async def save_worker(self, worker: WorkerRecord) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT OR REPLACE INTO workers ({_WORKER_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (worker.worker_id, worker.host, worker.pid, worker.started_at,
                 worker.heartbeat_at, worker.concurrency, worker.in_flight,
                 worker.lease_seconds, json.dumps(list(worker.pools)), worker.stopped_at))

        await self._write(op)

    async def list_workers(self, *, since: float) -> list[WorkerRecord]:
        def op() -> list[WorkerRecord]:
            rows = self._db().execute(
                f"SELECT {_WORKER_COLUMNS} FROM workers WHERE heartbeat_at >= ? "
                "ORDER BY started_at, worker_id", (since,)).fetchall()
            return [_worker_record(r) for r in rows]

        return await self._call(op)

    async def forget_workers(self, *, before: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM workers WHERE heartbeat_at < ?",
                                (before,)).rowcount

        return await self._write(op)


    # -- cluster-wide limits (processes sharing this file share them) -----------------
    # Each operation is one write: the group commit runs it inside BEGIN IMMEDIATE, so
    # it holds the file's write lock against every other process from read to write.

    @property
    def cluster_limits_default(self) -> bool:
        return False  # embedded: usually one process; opt in with Runtime(limits="cluster")

    @staticmethod
    def _buckets(conn: sqlite3.Connection, draws: Sequence[BucketDraw]
                 ) -> list[BucketState | None]:
        out: list[BucketState | None] = []
        for draw in draws:
            row = conn.execute("SELECT tokens, updated_at FROM rate_buckets WHERE key = ?",
                               (draw.key,)).fetchone()
            out.append(None if row is None else BucketState(row[0], row[1]))
        return out

    @staticmethod
    def _save_buckets(conn: sqlite3.Connection, draws: Sequence[BucketDraw],
                      states: Sequence[BucketState]) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO rate_buckets (key, tokens, updated_at, capacity, "
            "refill_per_second) VALUES (?, ?, ?, ?, ?)",
            [(d.key, s.tokens, s.updated_at, d.capacity, d.refill_per_second)
             for d, s in zip(draws, states, strict=True)])

    async def rate_reserve(self, draws: Sequence[BucketDraw], *, now: float,
                           max_wait: float | None = None) -> Reservation:
        def op(conn: sqlite3.Connection) -> Reservation:
            reservation, states = plan_reservation(self._buckets(conn, draws), draws,
                                                   now=now, max_wait=max_wait)
            self._save_buckets(conn, draws, states)
            return reservation

        return await self._write(op)

    async def rate_adjust(self, draws: Sequence[BucketDraw], *, now: float) -> tuple[float, ...]:
        def op(conn: sqlite3.Connection) -> tuple[float, ...]:
            states = [plan_adjustment(self._buckets(conn, [d])[0], d, now=now) for d in draws]
            self._save_buckets(conn, draws, states)
            return tuple(s.tokens for s in states)

        return await self._write(op)

    async def bulkhead_acquire(self, pool: str, holder: str, *, max_concurrent: int,
                               now: float, lease_seconds: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM bulkhead_slots WHERE pool = ? AND expires_at < ?",
                         (pool, now))
            held = conn.execute("SELECT count(*), sum(holder = ?) FROM bulkhead_slots "
                                "WHERE pool = ?", (holder, pool)).fetchone()
            if not held[1] and held[0] >= max_concurrent:
                return False
            conn.execute(
                "INSERT INTO bulkhead_slots (pool, holder, acquired_at, expires_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (pool, holder) "
                "DO UPDATE SET expires_at = excluded.expires_at",
                (pool, holder, now, now + lease_seconds))
            return True

        return await self._write(op)

    async def bulkhead_renew(self, holders: Sequence[str], *, now: float,
                             lease_seconds: float) -> set[str]:
        def op(conn: sqlite3.Connection) -> set[str]:
            kept = set()
            for holder in holders:
                if conn.execute("UPDATE bulkhead_slots SET expires_at = ? WHERE holder = ?",
                                (now + lease_seconds, holder)).rowcount:
                    kept.add(holder)
            return kept

        return await self._write(op) if holders else set()

    async def bulkhead_release(self, pool: str, holder: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM bulkhead_slots WHERE pool = ? AND holder = ?",
                         (pool, holder))

        await self._write(op)

    async def limits_view(self, *, now: float) -> LimitsView:
        """The buckets and bulkhead slots in this journal at ``now`` (reads only)."""
        def op() -> LimitsView:
            db = self._db()
            have = {r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN "
                "('rate_buckets', 'bulkhead_slots')")}
            buckets = db.execute(
                "SELECT key, tokens, updated_at, capacity, refill_per_second "
                "FROM rate_buckets").fetchall() if "rate_buckets" in have else []
            slots = db.execute(
                "SELECT pool, holder, acquired_at, expires_at FROM bulkhead_slots"
            ).fetchall() if "bulkhead_slots" in have else []
            return limits_view(buckets, slots, now=now)

        return await self._call(op)

    async def bulkhead_active(self, pool: str, *, now: float) -> int:
        def op() -> int:
            row = self._db().execute("SELECT count(*) FROM bulkhead_slots "
                                     "WHERE pool = ? AND expires_at >= ?", (pool, now)).fetchone()
            return int(row[0])

        return await self._call(op)

    # -- blackboards (see _board: lock, plan, write, one write lock across processes) --

    async def board_apply(self, op: BoardOp, *, now: float) -> BoardEntry | None:
        def write(conn: sqlite3.Connection) -> BoardEntry | None:
            done = conn.execute("SELECT entry FROM board_ops WHERE op_key = ?",
                                (op.op_key,)).fetchone()
            if done is not None:
                return BoardEntry.from_json(json.loads(done[0]))
            if op.kind == "take":
                assert op.pattern is not None
                current = choose(op.pattern, self._board_rows(
                    conn, op.board, op.pattern.prefix, "AND taken_by IS NULL"))
            else:
                found = self._board_rows(conn, op.board, op.key, "AND key = ?", op.key)
                current = found[0] if found else None
            entry = plan_board(op, current, now)
            if entry is None:
                return None
            conn.execute(f"INSERT OR REPLACE INTO board_entries ({_BOARD_COLUMNS}) "
                         f"VALUES ({', '.join('?' * len(ROW_COLUMNS))})", entry_row(entry))
            conn.execute("INSERT INTO board_ops (op_key, board, entry, created_at) "
                         "VALUES (?, ?, ?, ?)",
                         (op.op_key, op.board, json.dumps(entry.as_json()), now))
            return entry

        return await self._write(write)

    @staticmethod
    def _board_rows(conn: sqlite3.Connection, board: str, prefix: str, extra: str = "",
                    *args: Any) -> list[BoardEntry]:
        rows = conn.execute(
            f"SELECT {_BOARD_COLUMNS} FROM board_entries WHERE board = ? AND "
            f"substr(key, 1, ?) = ? {extra} ORDER BY key",
            (board, len(prefix), prefix, *args)).fetchall()
        return [entry_from_row(r) for r in rows]

    async def board_entries(self, board: str, *, prefix: str = "") -> list[BoardEntry]:
        return await self._call(lambda: self._board_rows(self._db(), board, prefix))

    async def board_names(self) -> list[str]:
        def op() -> list[str]:
            return [r[0] for r in self._db().execute(
                "SELECT DISTINCT board FROM board_entries ORDER BY board")]

        return await self._call(op)

    async def board_watches(self, board: str) -> list[BoardWatch]:
        def op() -> list[BoardWatch]:
            db = self._db()
            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                          "name = 'board_watches'").fetchone() is None:
                return []  # a journal no writer of this stalwart has opened yet
            return [watch_from_row(r) for r in db.execute(
                f"SELECT {', '.join(WATCH_COLUMNS)} FROM board_watches WHERE board = ? "
                "ORDER BY created_at, run_id, signal", (board,))]

        return await self._call(op)

    async def board_watch(self, watch: BoardWatch) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT OR IGNORE INTO board_watches ({', '.join(WATCH_COLUMNS)}) "
                         "VALUES (?, ?, ?, ?, ?)", watch_row(watch))

        await self._write(write)

    async def board_unwatch(self, run_id: str, signal: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM board_watches WHERE run_id = ? AND signal = ?",
                         (run_id, signal))

        await self._write(write)

    async def board_wake(self, entry: BoardEntry, *, now: float) -> list[str]:
        def write(conn: sqlite3.Connection) -> list[str]:
            woken: list[str] = []
            for w in watching([watch_from_row(r) for r in conn.execute(
                    f"SELECT {', '.join(WATCH_COLUMNS)} FROM board_watches WHERE board = ?",
                    (entry.board,))], entry):
                state = _state(conn, w.run_id)
                pending = conn.execute(
                    "SELECT 1 FROM signals WHERE run_id = ? AND name = ? AND "
                    "consumed_step_id IS NULL LIMIT 1", (w.run_id, w.signal)).fetchone()
                action = wake_action(state, pending is not None)
                if action == "forget":
                    conn.execute("DELETE FROM board_watches WHERE run_id = ? AND signal = ?",
                                 (w.run_id, w.signal))
                elif action == "signal":
                    assert state is not None
                    conn.execute("INSERT INTO signals (run_id, name, payload, created_at) "
                                 "VALUES (?, ?, ?, ?)",
                                 (w.run_id, w.signal, wake_payload(entry), now))
                    self._write_plan(conn, plan_wake(state, now=now), now)
                    woken.append(w.run_id)
            return woken

        return await self._write(write)


_INSERT_EVENT = ("INSERT INTO events (run_id, seq, kind, step_id, name, payload, created_at, "
                 "digest, payload_ref) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _insert_events(conn: sqlite3.Connection, events: Sequence[EventRow]) -> None:
    """Insert ``events`` in the caller's transaction, large payloads as blobs (``_blobs``)."""
    rows, blobs = split(events)
    if blobs:
        conn.executemany("INSERT INTO blobs (hash, content) VALUES (?, ?) "
                         "ON CONFLICT (hash) DO NOTHING", blobs)
    conn.executemany(_INSERT_EVENT, rows)


def _find(conn: sqlite3.Connection, columns: str, run_id: str) -> Any:
    """The run table's ``columns`` for ``run_id``, checked against a second structure, so
    that a damaged index of the run table is an error, never another run's row nor a run
    silently missing. The row the id index leads to must carry that id in the table
    itself (SQLite would read an indexed column from the index, so the row is fetched
    by the rowid the index gives: every column then comes from the table); a run not
    found must have no events either (the events table is a b-tree of its own, keyed by
    run id). ``columns`` start with ``run_id``."""
    row = conn.execute(f"SELECT {columns} FROM runs WHERE rowid = "
                       "(SELECT rowid FROM runs WHERE run_id = ?)", (run_id,)).fetchone()
    if row is not None:
        if row[0] != run_id:
            raise _index_damage(run_id)
        return row
    if conn.execute("SELECT 1 FROM events WHERE run_id = ? AND seq = 1",
                    (run_id,)).fetchone() is not None:
        raise _index_damage(run_id)
    return None


def _state(conn: sqlite3.Connection, run_id: str) -> RunState | None:
    row = _find(conn, STATE_COLUMNS, run_id)
    return state_from_row(row) if row else None


_BOARD_COLUMNS = ", ".join(ROW_COLUMNS)


@functools.cache
def _update_sql(columns: tuple[str, ...]) -> str:
    return (f"UPDATE runs SET {', '.join(f'{c} = ?' for c in columns)} "
            "WHERE run_id = ?")


def _index_damage(run_id: str) -> StoreCorruptedError:
    return StoreCorruptedError(
        f"the journal is damaged at run {run_id}: an index of the run table disagrees "
        "with the run's rows; nothing was changed (stalwart doctor checks every index)",
        run_id=run_id)


def _worker_record(row: Sequence[Any]) -> WorkerRecord:
    return WorkerRecord(
        worker_id=row[0], host=row[1], pid=row[2], started_at=row[3], heartbeat_at=row[4],
        concurrency=row[5], in_flight=row[6], lease_seconds=row[7],
        pools=tuple(json.loads(row[8])), stopped_at=row[9])

def _settle_all(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for fut, outcome in settled:
        _settle(fut, outcome)


def _settle(fut: asyncio.Future[Any], outcome: Any) -> None:
    if fut.done():
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)

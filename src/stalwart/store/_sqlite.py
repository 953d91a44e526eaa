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

This module holds the store's file handling, its thread, the group commit, and its
runs, leases and signals. The tables besides the runs (the workers registry,
cluster-wide limits, blackboards, the approvals query) are in ``_sqlite_ops``; reading
and writing run rows for a plan, in ``_sqlite_rows``; the schema, in ``_sqlite_schema``.
"""

from __future__ import annotations

import asyncio
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
from . import _sqlite_ops as ops
from . import _sqlite_schema as schema
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
from ._blobs import resolve
from ._board import BoardEntry, BoardOp, BoardWatch
from ._chain import RUN_COLUMNS, run_record, verify_events
from ._limits import BucketDraw, LimitsView, Reservation
from ._runs import (
    STATE_COLUMNS,
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
    require,
    state_from_row,
)
from ._sqlite_rows import find, index_damage, insert_events, read_state, ready_query, write_plan

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_SELECT_RUN = f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?"

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
                parent_state = check_lease(read_state(conn, parent.run_id), parent)
            existing = find(conn, RUN_COLUMNS, run_id)
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
                insert_events(conn, new.events)
            if parent is not None and parent_state is not None and parent_events:
                write_plan(conn, plan_append(parent_state, parent, parent_events,
                                             now=now), now)
            return (run_record(existing), False) if existing is not None else (rec, True)

        return await self._write(op)

    async def get_run(self, run_id: str) -> RunRecord | None:
        def op() -> RunRecord | None:
            row = find(self._db(), RUN_COLUMNS, run_id)
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
        return await self._call(lambda: ops.approval_journals(self._db(), run_ids))

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
                for row in conn.execute(*ready_query(
                        now, limit - len(stolen), run_id, workflows, list(stolen))):
                    states[row[0]] = state_from_row(row)
                    ready.append(row[0])
            leases = []
            for rid in claim_order(list(stolen), ready, limit):
                plan = plan_claim(states[rid], owner, now=now, lease_seconds=lease_seconds,
                                  steal=stolen.get(rid))
                if plan is None:  # the index said ready, the row says otherwise
                    raise index_damage(rid)
                write_plan(conn, plan, now)
                leases.append(Lease(rid, owner.id, plan.after.lease_token,
                                    now + lease_seconds))
            return leases

        return await self._write(op)

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
                plan = plan_renew(read_state(conn, lease.run_id), lease, now=now,
                                  lease_seconds=lease_seconds)
                if plan is not None:
                    write_plan(conn, plan, now)
                out[lease.run_id] = (None if plan is None else Lease(
                    lease.run_id, lease.owner, lease.token, now + lease_seconds))
            return out

        return await self._write(op)

    # -- the journal -----------------------------------------------------------------

    async def append(
        self,
        lease: Lease,
        events: Sequence[NewEvent],
        *,
        now: float,
        finish: Finish | None = None,
    ) -> AppendResult:
        def op(conn: sqlite3.Connection) -> AppendResult:
            plan = plan_append(read_state(conn, lease.run_id), lease, events, now=now,
                               finish=finish)
            try:
                write_plan(conn, plan, now)
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
            plan = plan_wake(require(read_state(conn, run_id), run_id), now=now)
            conn.execute(
                "INSERT INTO signals (run_id, name, payload, created_at) VALUES (?, ?, ?, ?)",
                (run_id, name, payload, now))
            write_plan(conn, plan, now)
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
            state = check_lease(read_state(conn, lease.run_id), lease)
            row = conn.execute(
                "SELECT id, payload FROM signals WHERE run_id = ? AND name = ? AND "
                "consumed_step_id IS NULL ORDER BY id LIMIT 1", (lease.run_id, name)).fetchone()
            if row is None:
                return None
            plan = plan_take_signal(state, lease, name=name, step_id=step_id,
                                    payload=row[1], now=now)
            conn.execute("UPDATE signals SET consumed_step_id = ? WHERE id = ?",
                         (step_id, row[0]))
            write_plan(conn, plan, now)
            return str(row[1])

        return await self._write(op)

    async def request_cancel(self, run_id: str, *, now: float) -> RunRecord:
        def cancel(conn: sqlite3.Connection, rid: str) -> None:
            state = read_state(conn, rid)
            if state is None:
                return
            plan = plan_cancel(state, now=now, cleanups=0 if state.is_terminal else
                               open_cleanups(conn.execute(
                                   "SELECT kind, name FROM events WHERE run_id = ? AND kind "
                                   "= 'step_completed' AND name IN (?, ?)",
                                   (rid, CLEANUP_OPENED, CLEANUP_CLOSED)).fetchall()))
            write_plan(conn, plan, now)
            if plan.cascade:
                for (child,) in conn.execute("SELECT run_id FROM runs WHERE parent_run_id = ? "
                                             "ORDER BY created_at, rowid", (rid,)).fetchall():
                    cancel(conn, child)

        def op(conn: sqlite3.Connection) -> RunRecord:
            require(read_state(conn, run_id), run_id)
            cancel(conn, run_id)
            return run_record(conn.execute(_SELECT_RUN, (run_id,)).fetchone())

        return await self._write(op)

    async def redrive(self, run_id: str, *, now: float) -> RunRecord:
        def op(conn: sqlite3.Connection) -> RunRecord:
            state = require(read_state(conn, run_id), run_id)
            last = conn.execute(
                "SELECT step_id FROM events WHERE run_id = ? AND kind = 'run_dead_lettered' "
                "ORDER BY seq DESC LIMIT 1", (run_id,)).fetchone()
            write_plan(conn, plan_redrive(state, last[0] if last else None, now=now), now)
            return run_record(conn.execute(_SELECT_RUN, (run_id,)).fetchone())

        return await self._write(op)

    async def next_wake_at(self) -> float | None:
        def op() -> float | None:
            row = self._db().execute(
                "SELECT MIN(wake_at) FROM runs WHERE status IN ('sleeping', 'waiting') "
                "AND wake_at IS NOT NULL").fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._call(op)

    # -- the workers registry, cluster-wide limits, blackboards (_sqlite_ops) -----------
    # Each write is one operation of the group commit, inside BEGIN IMMEDIATE: it holds
    # the file's write lock against every other process from read to write.

    async def save_worker(self, worker: WorkerRecord) -> None:
        await self._write(lambda conn: ops.save_worker(conn, worker))

    async def list_workers(self, *, since: float) -> list[WorkerRecord]:
        return await self._call(lambda: ops.list_workers(self._db(), since=since))

    async def forget_workers(self, *, before: float) -> int:
        return await self._write(lambda conn: ops.forget_workers(conn, before=before))

    @property
    def cluster_limits_default(self) -> bool:
        return False  # embedded: usually one process; opt in with Runtime(limits="cluster")

    async def rate_reserve(self, draws: Sequence[BucketDraw], *, now: float,
                           max_wait: float | None = None) -> Reservation:
        return await self._write(
            lambda conn: ops.rate_reserve(conn, draws, now=now, max_wait=max_wait))

    async def rate_adjust(self, draws: Sequence[BucketDraw], *, now: float) -> tuple[float, ...]:
        return await self._write(lambda conn: ops.rate_adjust(conn, draws, now=now))

    async def bulkhead_acquire(self, pool: str, holder: str, *, max_concurrent: int,
                               now: float, lease_seconds: float) -> bool:
        return await self._write(lambda conn: ops.bulkhead_acquire(
            conn, pool, holder, max_concurrent=max_concurrent, now=now,
            lease_seconds=lease_seconds))

    async def bulkhead_renew(self, holders: Sequence[str], *, now: float,
                             lease_seconds: float) -> set[str]:
        return await self._write(lambda conn: ops.bulkhead_renew(
            conn, holders, now=now, lease_seconds=lease_seconds)) if holders else set()

    async def bulkhead_release(self, pool: str, holder: str) -> None:
        await self._write(lambda conn: ops.bulkhead_release(conn, pool, holder))

    async def limits_view(self, *, now: float) -> LimitsView:
        """The buckets and bulkhead slots in this journal at ``now`` (reads only)."""
        return await self._call(lambda: ops.limits(self._db(), now=now))

    async def bulkhead_active(self, pool: str, *, now: float) -> int:
        return await self._call(lambda: ops.bulkhead_active(self._db(), pool, now=now))

    async def board_apply(self, op: BoardOp, *, now: float) -> BoardEntry | None:
        return await self._write(lambda conn: ops.board_apply(conn, op, now=now))

    async def board_entries(self, board: str, *, prefix: str = "") -> list[BoardEntry]:
        return await self._call(lambda: ops.board_entries(self._db(), board, prefix=prefix))

    async def board_names(self) -> list[str]:
        return await self._call(lambda: ops.board_names(self._db()))

    async def board_watches(self, board: str) -> list[BoardWatch]:
        return await self._call(lambda: ops.board_watches(self._db(), board))

    async def board_watch(self, watch: BoardWatch) -> None:
        await self._write(lambda conn: ops.board_watch(conn, watch))

    async def board_unwatch(self, run_id: str, signal: str) -> None:
        await self._write(lambda conn: ops.board_unwatch(conn, run_id, signal))

    async def board_wake(self, entry: BoardEntry, *, now: float) -> list[str]:
        return await self._write(lambda conn: ops.board_wake(conn, entry, now=now))


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

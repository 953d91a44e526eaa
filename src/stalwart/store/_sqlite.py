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
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar, final

from ..errors import (
    ConfigurationError,
    LeaseLostError,
    NotAStalwartStoreError,
    RunNotFoundError,
    SchemaVersionError,
    StoreCorruptedError,
    StoreError,
)
from ._base import (
    APP_ID,
    SCHEMA_VERSION,
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
)
from ._limits import (
    BucketDraw,
    BucketState,
    Reservation,
    plan_adjustment,
    plan_reservation,
)

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_APPLICATION_ID = 0x53574152  # "SWAR", in the SQLite header: identifies our files
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE stalwart_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    workflow_ref TEXT,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    result TEXT,
    error TEXT,
    parent_run_id TEXT,
    parent_step_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    wake_at REAL,
    lease_owner TEXT,
    lease_token INTEGER NOT NULL DEFAULT 0,
    lease_expires_at REAL,
    owner_host TEXT,
    owner_pid INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    wake_requested INTEGER NOT NULL DEFAULT 0,
    event_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_status ON runs (status, wake_at);
CREATE INDEX runs_parent ON runs (parent_run_id);
CREATE INDEX runs_created ON runs (created_at);
CREATE TABLE events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    step_id TEXT,
    name TEXT,
    payload TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX events_one_outcome ON events (run_id, step_id)
    WHERE kind = 'step_completed';
CREATE TABLE signals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    consumed_step_id TEXT
);
CREATE INDEX signals_pending ON signals (run_id, name) WHERE consumed_step_id IS NULL;
"""

# The workers registry is operational state that no run depends on: created when
# missing, at every open, and ignored by stalwarts that predate it, so adding it did not
# change the journal's schema version.
_WORKERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    concurrency INTEGER NOT NULL,
    in_flight INTEGER NOT NULL,
    lease_seconds REAL NOT NULL,
    pools TEXT NOT NULL,
    stopped_at REAL
)
"""
# Cluster-wide limits (token buckets, bulkhead slots) are operational state too: no run
# depends on them, so like the workers registry they are created when missing.
_LIMITS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS rate_buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL, "
    "updated_at REAL NOT NULL, capacity REAL NOT NULL, refill_per_second REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bulkhead_slots (pool TEXT NOT NULL, holder TEXT NOT NULL, "
    "acquired_at REAL NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (pool, holder))",
    "CREATE INDEX IF NOT EXISTS bulkhead_slots_holder ON bulkhead_slots (holder)",
)
_WORKER_COLUMNS = ("worker_id, host, pid, started_at, heartbeat_at, concurrency, in_flight, "
                   "lease_seconds, pools, stopped_at")

_RUN_COLUMNS = (
    "run_id, workflow, workflow_ref, status, input, result, error, parent_run_id, parent_step_id, "
    "created_at, updated_at, wake_at, lease_owner, lease_token, lease_expires_at, "
    "owner_host, owner_pid, cancel_requested"
)


def _run_record(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        run_id=row[0], workflow=row[1], workflow_ref=row[2], status=RunStatus(row[3]),
        input=row[4], result=row[5], error=row[6], parent_run_id=row[7],
        parent_step_id=row[8], created_at=row[9], updated_at=row[10], wake_at=row[11],
        lease_owner=row[12], lease_token=row[13], lease_expires_at=row[14],
        owner_host=row[15], owner_pid=row[16], cancel_requested=bool(row[17]),
    )


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
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout: float = 10.0,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigurationError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self._path = str(path) if path is not None else str(default_path())
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # queued writes: (op, is_append, future); one _flush commits them together
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], bool,
                                  asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0
        """How many write transactions committed (for tests and benchmarks)."""

    @property
    def url(self) -> str:
        return f"sqlite:///{self._path}"

    @property
    def path(self) -> str:
        return self._path

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        if self._conn is not None:
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
        if path != ":memory:":
            p = Path(path)
            if p.is_dir():
                raise NotAStalwartStoreError(f"{path} is a directory, not a stalwart journal")
            if p.exists() and p.stat().st_size > 0:
                with p.open("rb") as fh:
                    if fh.read(16) != _SQLITE_MAGIC:
                        raise NotAStalwartStoreError(
                            f"{path} is not a stalwart journal (not an SQLite file); "
                            "it was left untouched"
                        )
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=self._busy_timeout)
        try:
            self._check_or_create(conn)
            conn.execute(_WORKERS_SCHEMA)
            for stmt in _LIMITS_SCHEMA:
                conn.execute(stmt)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _check_or_create(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreCorruptedError(f"{self._path} cannot be read as a journal: {exc}") from exc
        if not tables and app_id == 0:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                tables_now = conn.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
                if tables_now == 0:  # another process may have created it meanwhile
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                    conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                    conn.executemany(
                        "INSERT INTO stalwart_meta (key, value) VALUES (?, ?)",
                        [("app", APP_ID), ("schema_version", str(SCHEMA_VERSION))],
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if tables_now:
                self._check_or_create(conn)
            return
        if app_id != _APPLICATION_ID or "stalwart_meta" not in tables:
            raise NotAStalwartStoreError(
                f"{self._path} is an SQLite database but not a stalwart journal; "
                "it was left untouched"
            )
        try:
            meta = dict(conn.execute("SELECT key, value FROM stalwart_meta").fetchall())
            check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreCorruptedError(f"{self._path} is corrupted: {exc}") from exc
        if check != "ok":
            raise StoreCorruptedError(f"{self._path} is corrupted: {check}")
        if meta.get("app") != APP_ID:
            raise NotAStalwartStoreError(f"{self._path} is not a stalwart journal")
        try:
            found = int(meta.get("schema_version", "0"))
        except ValueError:
            raise StoreCorruptedError(f"{self._path} has an unreadable schema version") from None
        if found != SCHEMA_VERSION:
            newer = "a newer" if found > SCHEMA_VERSION else "an older"
            raise SchemaVersionError(
                f"{self._path} was written by {newer} stalwart (journal schema {found}, "
                f"this stalwart reads {SCHEMA_VERSION}); it was left untouched",
                found=found, expected=SCHEMA_VERSION,
            )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")

    async def close(self) -> None:
        if self._executor is None:
            return
        conn = self._conn
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
        return await loop.run_in_executor(self._executor, fn, *args)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
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
            if parent is not None:
                self._check_lease(conn, parent)
            existing = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            created = existing is None
            if created:
                conn.execute(
                    "INSERT INTO runs (run_id, workflow, workflow_ref, status, input, "
                    "parent_run_id, parent_step_id, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, workflow, workflow_ref, RunStatus.PENDING, input,
                     parent.run_id if parent else None, parent_step_id, now, now),
                )
                self._insert_events(conn, run_id, 0,
                                    [NewEvent(EventKind.RUN_CREATED, name=workflow,
                                              payload=input), *events], now)
            if parent is not None and parent_events:
                self._append_checked(conn, parent, parent_events, now, None)
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            return _run_record(row), created

        return await self._write(op)

    async def get_run(self, run_id: str) -> RunRecord | None:
        def op() -> RunRecord | None:
            row = self._db().execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            return _run_record(row) if row else None

        return await self._call(op)

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        parent_run_id: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        clauses, args = [], []
        if status is not None:
            clauses.append("status = ?")
            args.append(str(status))
        if parent_run_id is not None:
            clauses.append("parent_run_id = ?")
            args.append(parent_run_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""

        def op() -> list[RunRecord]:
            rows = self._db().execute(
                f"SELECT {_RUN_COLUMNS} FROM runs {where} "
                "ORDER BY created_at DESC, rowid DESC LIMIT ?", (*args, limit)).fetchall()
            return [_run_record(r) for r in rows]

        return await self._call(op)

    async def load_events(self, run_id: str) -> list[Event]:
        def op() -> list[Event]:
            rows = self._db().execute(
                "SELECT run_id, seq, kind, step_id, name, payload, created_at FROM events "
                "WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
            return [Event(r[0], r[1], EventKind(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

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
            ready = (
                "(status = 'pending' OR (status = 'running' AND lease_expires_at < :now) "
                "OR (status IN ('sleeping', 'waiting') AND wake_at IS NOT NULL "
                "AND wake_at <= :now))"
            )
            params: dict[str, Any] = {"now": now, "limit": limit}
            if workflows is not None:
                names = ", ".join(f":wf{i}" for i in range(len(workflows)))
                ready = f"{ready} AND workflow IN ({names})"
                params.update({f"wf{i}": w for i, w in enumerate(workflows)})
            if run_id is not None:
                sql = f"SELECT run_id FROM runs WHERE run_id = :run_id AND {ready}"
                params["run_id"] = run_id
            else:
                sql = f"SELECT run_id FROM runs WHERE {ready} ORDER BY created_at LIMIT :limit"
            ids = [r[0] for r in conn.execute(sql, params)]
            for sid, sowner, stoken in steal:
                if len(ids) >= limit:
                    break
                if run_id is not None and sid != run_id:
                    continue
                row = conn.execute(
                    "SELECT workflow FROM runs WHERE run_id = ? AND status = 'running' "
                    "AND lease_owner = ? AND lease_token = ?", (sid, sowner, stoken)).fetchone()
                if (row and sid not in ids
                        and (workflows is None or row[0] in workflows)):
                    ids.append(sid)
            leases = []
            expires = now + lease_seconds
            for rid in ids[:limit]:
                row = conn.execute(
                    "UPDATE runs SET status = 'running', lease_owner = ?, "
                    "lease_token = lease_token + 1, lease_expires_at = ?, owner_host = ?, "
                    "owner_pid = ?, wake_at = NULL, wake_requested = 0, updated_at = ? "
                    "WHERE run_id = ? RETURNING lease_token, event_count",
                    (owner.id, expires, owner.host, owner.pid, now, rid)).fetchone()
                self._insert_events(conn, rid, row[1], [NewEvent(
                    EventKind.RUN_CLAIMED, name=owner.id,
                    payload=f'{{"host": "{owner.host}", "pid": {owner.pid}}}')], now)
                leases.append(Lease(rid, owner.id, row[0], expires))
            return leases

        return await self._write(op)

    async def local_running(self, host: str) -> list[RunRecord]:
        def op() -> list[RunRecord]:
            rows = self._db().execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE status = 'running' AND owner_host = ?",
                (host,)).fetchall()
            return [_run_record(r) for r in rows]

        return await self._call(op)

    async def renew(
        self, leases: Sequence[Lease], *, now: float, lease_seconds: float
    ) -> dict[str, Lease | None]:
        def op(conn: sqlite3.Connection) -> dict[str, Lease | None]:
            out: dict[str, Lease | None] = {}
            expires = now + lease_seconds
            for lease in leases:
                cur = conn.execute(
                    "UPDATE runs SET lease_expires_at = ? WHERE run_id = ? AND "
                    "lease_owner = ? AND lease_token = ? AND status = 'running'",
                    (expires, lease.run_id, lease.owner, lease.token))
                out[lease.run_id] = (Lease(lease.run_id, lease.owner, lease.token, expires)
                                     if cur.rowcount else None)
            return out

        return await self._write(op)

    # -- the journal -----------------------------------------------------------------

    def _check_lease(self, conn: sqlite3.Connection, lease: Lease) -> tuple[Any, ...]:
        row = conn.execute(
            "SELECT status, lease_owner, lease_token, cancel_requested, event_count, "
            "parent_run_id, wake_requested FROM runs WHERE run_id = ?",
            (lease.run_id,)).fetchone()
        if (row is None or row[0] != RunStatus.RUNNING or row[1] != lease.owner
                or row[2] != lease.token):
            raise LeaseLostError(
                f"run {lease.run_id}: lease {lease.owner}#{lease.token} is no longer current",
                run_id=lease.run_id)
        return tuple(row)

    @staticmethod
    def _insert_events(conn: sqlite3.Connection, run_id: str, count: int,
                       events: Sequence[NewEvent], now: float) -> int:
        conn.executemany(
            "INSERT INTO events (run_id, seq, kind, step_id, name, payload, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(run_id, count + i + 1, str(e.kind), e.step_id, e.name, e.payload, now)
             for i, e in enumerate(events)],
        )
        count += len(events)
        conn.execute("UPDATE runs SET event_count = ?, updated_at = ? WHERE run_id = ?",
                     (count, now, run_id))
        return count

    def _wake_parent(self, conn: sqlite3.Connection, parent_run_id: str | None,
                     now: float) -> None:
        if parent_run_id is None:
            return
        conn.execute(
            "UPDATE runs SET status = CASE WHEN status = 'waiting' THEN 'pending' "
            "ELSE status END, wake_at = CASE WHEN status = 'waiting' THEN NULL ELSE wake_at END, "
            "wake_requested = 1, updated_at = ? WHERE run_id = ?", (now, parent_run_id))

    def _append_checked(self, conn: sqlite3.Connection, lease: Lease,
                        events: Sequence[NewEvent], now: float,
                        finish: Finish | None) -> AppendResult:
        _, _, _, cancel, count, parent_run_id, wake_requested = self._check_lease(
            conn, lease)
        if events:
            self._insert_events(conn, lease.run_id, count, events, now)
        if finish is not None:
            new_status = finish.status
            wake_at = finish.wake_at
            if new_status == RunStatus.WAITING and wake_requested:
                new_status, wake_at = RunStatus.PENDING, None  # a wake-up raced the park
            elif new_status == RunStatus.SLEEPING and cancel:
                new_status, wake_at = RunStatus.PENDING, None  # so is a cancel: observe it now
            conn.execute(
                "UPDATE runs SET status = ?, result = ?, error = ?, wake_at = ?, "
                "lease_owner = NULL, lease_expires_at = NULL, updated_at = ? "
                "WHERE run_id = ?",
                (str(new_status), finish.result, finish.error, wake_at, now, lease.run_id))
            if new_status in TERMINAL_STATUSES:
                self._wake_parent(conn, parent_run_id, now)
        return AppendResult(cancel_requested=bool(cancel))

    async def append(
        self,
        lease: Lease,
        events: Sequence[NewEvent],
        *,
        now: float,
        finish: Finish | None = None,
    ) -> AppendResult:
        def op(conn: sqlite3.Connection) -> AppendResult:
            try:
                return self._append_checked(conn, lease, events, now, finish)
            except sqlite3.IntegrityError as exc:
                raise LeaseLostError(
                    f"run {lease.run_id}: a step outcome was already recorded ({exc})",
                    run_id=lease.run_id) from exc

        return await self._enqueue(op, is_append=True)  # type: ignore[no-any-return]

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._flush_scheduled = False
        if not batch:
            return
        outcomes: list[Any] = []
        try:
            conn = self._db()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"cannot start a write on {self._path}: {exc}",
                                 retryable=True) from exc
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
                        outcomes.append(exc)
                conn.execute("COMMIT")
                self.commits += 1
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException as exc:
            err = exc if isinstance(exc, StoreError) else StoreError(
                f"journal write failed: {exc}", retryable=True)
            if err is not exc:
                err.__cause__ = exc
            outcomes = [err] * len(batch)
        # One wake-up of the event loop for the whole batch, not one per waiting write.
        loop.call_soon_threadsafe(
            _settle_all, [(fut, outcome) for (*_, fut), outcome in zip(batch, outcomes,
                                                                       strict=True)])

    # -- signals and cancellation ----------------------------------------------------

    async def send_signal(self, run_id: str, name: str, payload: str, *, now: float) -> RunRecord:
        def op(conn: sqlite3.Connection) -> RunRecord:
            row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            conn.execute(
                "INSERT INTO signals (run_id, name, payload, created_at) VALUES (?, ?, ?, ?)",
                (run_id, name, payload, now))
            conn.execute(
                "UPDATE runs SET status = CASE WHEN status = 'waiting' THEN 'pending' "
                "ELSE status END, wake_at = CASE WHEN status = 'waiting' THEN NULL "
                "ELSE wake_at END, wake_requested = 1 WHERE run_id = ?", (run_id,))
            out = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            return _run_record(out)

        return await self._write(op)

    async def take_signal(
        self, lease: Lease, name: str, step_id: str, *, now: float
    ) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            self._check_lease(conn, lease)
            row = conn.execute(
                "SELECT id, payload FROM signals WHERE run_id = ? AND name = ? AND "
                "consumed_step_id IS NULL ORDER BY id LIMIT 1", (lease.run_id, name)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE signals SET consumed_step_id = ? WHERE id = ?",
                         (step_id, row[0]))
            self._append_checked(conn, lease, [NewEvent(
                EventKind.SIGNAL_RECEIVED, step_id=step_id, name=name, payload=row[1])],
                now, None)
            return str(row[1])

        return await self._write(op)

    async def request_cancel(self, run_id: str, *, now: float) -> RunRecord:
        def cancel_one(conn: sqlite3.Connection, rid: str) -> None:
            row = conn.execute(
                "SELECT status, lease_expires_at, event_count, parent_run_id FROM runs "
                "WHERE run_id = ?", (rid,)).fetchone()
            if row is None or row[0] in TERMINAL_STATUSES:
                return
            status, expires, count, parent = row
            if status == RunStatus.RUNNING and expires is not None and expires >= now:
                conn.execute("UPDATE runs SET cancel_requested = 1, wake_requested = 1 "
                             "WHERE run_id = ?", (rid,))
            else:
                conn.execute(
                    "UPDATE runs SET status = 'cancelled', cancel_requested = 1, "
                    "lease_owner = NULL, lease_expires_at = NULL, wake_at = NULL "
                    "WHERE run_id = ?", (rid,))
                self._insert_events(conn, rid, count,
                                    [NewEvent(EventKind.RUN_CANCELLED)], now)
                self._wake_parent(conn, parent, now)
            for (child,) in conn.execute(
                    "SELECT run_id FROM runs WHERE parent_run_id = ?", (rid,)).fetchall():
                cancel_one(conn, child)

        def op(conn: sqlite3.Connection) -> RunRecord:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            cancel_one(conn, run_id)
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            return _run_record(row)

        return await self._write(op)

    async def redrive(self, run_id: str, *, now: float) -> RunRecord:
        def op(conn: sqlite3.Connection) -> RunRecord:
            row = conn.execute("SELECT status, event_count FROM runs WHERE run_id = ?",
                               (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            if row[0] != RunStatus.DEAD_LETTERED:
                raise ConfigurationError(
                    f"run {run_id} is {row[0]}, not dead_lettered; only dead-lettered runs "
                    "can be retried", run_id=run_id)
            last = conn.execute(
                "SELECT step_id FROM events WHERE run_id = ? AND kind = 'run_dead_lettered' "
                "ORDER BY seq DESC LIMIT 1", (run_id,)).fetchone()
            self._insert_events(conn, run_id, row[1], [NewEvent(
                EventKind.RUN_REDRIVEN, step_id=last[0] if last else None)], now)
            conn.execute(
                "UPDATE runs SET status = 'pending', result = NULL, error = NULL, "
                "cancel_requested = 0, updated_at = ? WHERE run_id = ?", (now, run_id))
            out = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            return _run_record(out)

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

    async def bulkhead_active(self, pool: str, *, now: float) -> int:
        def op() -> int:
            row = self._db().execute("SELECT count(*) FROM bulkhead_slots "
                                     "WHERE pool = ? AND expires_at >= ?", (pool, now)).fetchone()
            return int(row[0])

        return await self._call(op)


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

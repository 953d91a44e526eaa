"""The shared journal: PostgreSQL, for many workers on many machines.

Same semantics as :class:`~stalwart.store.SQLiteStore` (both pass
``tests/store/test_conformance.py``); what differs is how they are obtained:

* **Fencing.** Every write that acts for a run locks its row (``SELECT … FOR UPDATE``)
  and checks the lease owner and token in the same transaction as the write.
* **Claims** pick ready runs with ``FOR UPDATE SKIP LOCKED``: racing workers each get
  different runs and never wait on one another.
* **Group commit.** Appends queue while earlier ones are being written; a flusher takes
  the queue as one transaction, each append in its own savepoint, so a fenced-off
  writer fails alone. A few flushers run at once, each on its own pooled connection.
* **Wake-ups.** New runs, signals, finished executions and cancellations send
  ``NOTIFY stalwart_wake`` (payload: the run id) right after they commit, coalesced by
  one notifier per store (not inside the write: PostgreSQL serializes the commits of
  transactions that NOTIFY, a convoy that stalled concurrent workers);
  :meth:`PostgresStore.wait_for_notification` lets a scheduler sleep until one comes.
  Polling stays the safety net: a notification can be lost while a listener reconnects.
* **Errors.** Connection failures, pool timeouts, deadlocks and serialization failures
  become :class:`~stalwart.errors.StoreError` with ``retryable=True`` (deadlocks are
  first retried here, a few times).

The tables (``stalwart_meta``, ``stalwart_runs``, ``stalwart_events``,
``stalwart_signals``) live in the first schema of the connection's ``search_path``
(``?options=-csearch_path%3Dmyschema`` in the URL picks one). ``stalwart_meta`` holds the
schema version; :meth:`PostgresStore.open` creates the tables or migrates an older schema,
under an advisory lock so that workers starting together do it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from ..errors import (
    ConfigurationError,
    LeaseLostError,
    NotAStalwartStoreError,
    RunNotFoundError,
    StoreError,
)
from ._base import (
    CLEANUP_CLOSED,
    CLEANUP_OPENED,
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
from ._chain import (
    GENESIS,
    RUN_COLUMNS,
    chain,
    outcome_digest,
    run_digest,
    run_record,
    verify_events,
)
from ._claims import READY_ORDER_SQL, plan_claim
from ._limits import (
    BucketDraw,
    BucketState,
    Reservation,
    plan_adjustment,
    plan_reservation,
)
from ._pg_conninfo import check_conninfo, invalid_option
from ._postgres_schema import Access, check_or_create

__all__ = ["CHANNEL", "PostgresStore"]

log = logging.getLogger("stalwart.store.postgres")

T = TypeVar("T")
Conn = AsyncConnection[TupleRow]

CHANNEL = "stalwart_wake"
"""The ``LISTEN``/``NOTIFY`` channel; each notification's payload is a run id."""

_SELECT_RUN = f"SELECT {RUN_COLUMNS} FROM stalwart_runs WHERE run_id = %s"
_READY = (
    "(status = 'pending' OR (status = 'running' AND lease_expires_at < %(now)s) "
    "OR (status IN ('sleeping', 'waiting') AND wake_at IS NOT NULL AND wake_at <= %(now)s))"
)
_TRANSIENT_ATTEMPTS = 5
_notes: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "stalwart_pg_notes", default=None)
"""The run ids the current write transaction will notify about once it commits."""
_WORKER_COLUMNS = ("worker_id, host, pid, started_at, heartbeat_at, concurrency, in_flight, "
                   "lease_seconds, pools, stopped_at")


def _transient(exc: psycopg.Error) -> bool:
    """A deadlock or serialization failure (SQLSTATE class 40): the transaction may be
    retried. (psycopg's DeadlockDetected does not derive from TransactionRollback.)"""
    return (exc.sqlstate or "").startswith("40")


def printable_url(url: str) -> str:
    """``url`` without its password (in the user part or the query)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


@dataclass(slots=True)
class _Append:
    lease: Lease
    events: Sequence[NewEvent]
    now: float
    finish: Finish | None
    future: asyncio.Future[AppendResult]
    attempts: int = 0


_FOR_GOOD = re.compile(
    r'FATAL: +(database "[^"]*" does not exist|role "[^"]*" does not exist|'
    r'password authentication failed|no pg_hba\.conf entry)')


def _refused_for_good(exc: BaseException) -> bool:
    """A server that answered, and refused this URL for a reason no retry cures: no
    such database or role, a wrong password, no access rule. (A connection error
    carries no SQLSTATE in psycopg, so the server's FATAL message is what tells.) A
    worker started with a typo in its URL exits instead of retrying for ever."""
    return _FOR_GOOD.search(str(exc)) is not None


@final
class PostgresStore:
    """A journal in PostgreSQL, shared by any number of worker processes.

    Args:
        url: ``postgresql://user@host:port/dbname`` (libpq parameters in the query).
        min_connections, max_connections: the size of the connection pool (opened with
            ``min_connections``, grown on demand up to ``max_connections``). One more
            connection is opened to LISTEN for wake-ups once a runtime waits for them.
        write_concurrency: group-commit flushers writing at once (each holds a connection).
        max_batch: appends per group-commit transaction, at most.
        connect_timeout: seconds to wait for a connection before a retryable StoreError.
        access: ``"write"`` (default) creates or migrates the journal when it opens;
            ``"read"`` creates, migrates and writes nothing (its sessions are read-only)
            and says so where there is no journal; ``"client"`` reads like ``"read"``
            until its first write, which creates the journal if need be.
        create: create the journal even in a schema that holds other tables (by default
            only an empty schema gets one: never beside an application's tables by
            accident).

    Raises:
        ConfigurationError: ``url`` is malformed or sets an option to a value libpq
            refuses (checked before connecting: retrying would not help).
    """

    def __init__(
        self,
        url: str,
        *,
        min_connections: int = 1,
        max_connections: int = 10,
        write_concurrency: int = 4,
        max_batch: int = 64,
        connect_timeout: float = 10.0,
        access: Access = "write",
        create: bool = False,
    ) -> None:
        if not 1 <= min_connections <= max_connections:
            raise ConfigurationError("need 1 <= min_connections <= max_connections")
        if not 1 <= write_concurrency <= max_connections or max_batch < 1:
            raise ConfigurationError(
                "need 1 <= write_concurrency <= max_connections and max_batch >= 1")
        if access not in ("write", "client", "read"):
            raise ConfigurationError(f"access must be write, client or read, not {access!r}")
        check_conninfo(url, printable_url(url))
        self._access: Access = access
        self.create = create
        """Whether a writer may create the journal in a schema holding other tables."""
        self._journal = False
        """Whether the journal is known to exist (and be of this version) here."""
        self._journal_lock = asyncio.Lock()
        self._conninfo = url
        self._url = printable_url(url)
        self._min, self._max = min_connections, max_connections
        self._write_concurrency = write_concurrency
        self._max_batch = max_batch
        self._connect_timeout = connect_timeout
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._pending: list[_Append] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._to_notify: set[str] = set()
        self._notifier: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._notified = asyncio.Event()
        self.commits = 0
        """How many write transactions committed (for tests and benchmarks)."""

    @property
    def url(self) -> str:
        return self._url

    # -- lifecycle -------------------------------------------------------------------

    @property
    def access(self) -> Access:
        return self._access

    async def open(self) -> None:
        if self._pool is not None:
            return
        self._journal = await self._check_journal(self._access)
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self._conninfo, min_size=self._min, max_size=self._max, open=False,
            kwargs={"autocommit": True}, timeout=self._connect_timeout, name="stalwart",
            configure=self._read_only_session if self._access == "read" else None)
        try:
            await pool.open(wait=True, timeout=self._connect_timeout)
        except psycopg.Error as exc:
            await pool.close()
            raise self._error(exc, "cannot connect to") from exc
        self._pool = pool

    async def _check_journal(self, access: Access) -> bool:
        """Check (a writer: create or migrate) the journal on a connection of its own."""
        try:
            conn = await AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=int(self._connect_timeout))
        except psycopg.Error as exc:
            if invalid_option(exc):  # a value libpq refused before connecting: a typo
                raise ConfigurationError(
                    f"invalid PostgreSQL URL {self._url}: {exc}".strip()) from exc
            raise self._error(exc, "cannot connect to") from exc
        try:
            async with conn:
                if access == "read":
                    await self._read_only_session(conn)
                return await check_or_create(conn, self._url, access=access,
                                             create=self.create)
        except psycopg.Error as exc:
            raise self._error(exc, "cannot open the journal in") from exc

    @staticmethod
    async def _read_only_session(conn: Conn) -> None:
        """A reader's sessions refuse writes on the server's side too."""
        await conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")

    async def _writable(self) -> None:
        """Before a write: a reader refuses it; a client that found no journal creates
        it now (the first write of a ``Runtime(worker=False)``)."""
        if self._access == "read":
            raise StoreError(f"{self._url} was opened to read only; nothing was written")
        if self._journal:
            return
        if self._pool is None:
            raise StoreError("the store is not open")
        async with self._journal_lock:
            if not self._journal:
                self._journal = await self._check_journal("write")

    async def _readable(self) -> None:
        """Before a read: a client that found no journal looks again, and says so."""
        if self._journal:
            return
        if self._pool is None:
            raise StoreError("the store is not open")
        async with self._journal_lock:
            if not self._journal:
                self._journal = await self._check_journal("client")
        if not self._journal:
            raise NotAStalwartStoreError(
                f"there is no stalwart journal in {self._url} yet: nothing was created")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
            self._listening = asyncio.Event()
        while self._flushers:
            await asyncio.gather(*self._flushers, return_exceptions=True)
        if self._notifier is not None:
            await asyncio.gather(self._notifier, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # -- plumbing --------------------------------------------------------------------

    def _error(self, exc: BaseException, what: str) -> StoreError:
        retryable = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and \
            not _refused_for_good(exc)
        err = StoreError(f"{what} {self._url}: {exc}".strip(), retryable=retryable)
        err.__cause__ = exc
        return err

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        if self._pool is None:
            raise StoreError("the store is not open")
        async with self._pool.connection() as conn:
            yield conn

    async def _read(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()
                    ) -> list[TupleRow]:
        await self._readable()
        try:
            async with self._connection() as conn:
                cur = await conn.execute(sql, args)
                return await cur.fetchall()
        except psycopg.Error as exc:
            raise self._error(exc, "cannot read") from exc

    async def _write(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        await self._writable()
        for attempt in range(1, _TRANSIENT_ATTEMPTS + 1):
            notes: list[str] = []
            token = _notes.set(notes)
            try:
                async with self._connection() as conn, conn.transaction():
                    out = await fn(conn)
                self.commits += 1
                self._send_notifications(notes)
                return out
            except psycopg.Error as exc:
                if not _transient(exc) or attempt == _TRANSIENT_ATTEMPTS:
                    raise self._error(exc, "cannot write to") from exc
                await asyncio.sleep(random.uniform(0, 0.01 * 2 ** attempt))
            finally:
                _notes.reset(token)
        raise AssertionError("unreachable")

    async def _notify(self, conn: Conn, run_id: str) -> None:
        """Wake listeners about ``run_id`` once the current write commits."""
        notes = _notes.get()
        if notes is None:  # outside _write/_flush: notify within the transaction
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, run_id))
        else:
            notes.append(run_id)

    def _send_notifications(self, run_ids: list[str]) -> None:
        """Queue ``run_ids`` for the notifier, which sends them in its own transactions.

        Not in the write's transaction: PostgreSQL serializes the commits of transactions
        that NOTIFY (one lock, held through the commit's WAL flush), which made the
        writes of concurrent workers queue behind one another. A notification lost to a
        crash between the commit and the notifier is covered by the listeners' polling.
        """
        if not run_ids or self._pool is None:
            return
        self._to_notify.update(run_ids)
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.create_task(self._notify_loop(),
                                                 name="stalwart-pg-notify")

    async def _notify_loop(self) -> None:
        while self._to_notify and self._pool is not None:
            run_ids = sorted(self._to_notify)
            self._to_notify.clear()
            try:
                async with self._connection() as conn:
                    await conn.execute("SELECT pg_notify(%s, x) FROM unnest(%s::text[]) AS x",
                                       (CHANNEL, run_ids))
            except (psycopg.Error, StoreError) as exc:
                log.warning("%s: NOTIFY %s failed (%s); listeners will poll", self._url,
                            CHANNEL, exc)

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
        initial = [NewEvent(EventKind.RUN_CREATED, name=workflow, payload=input), *events]
        digests = chain(GENESIS, run_id, 1, initial, now)
        parent_id = parent.run_id if parent else None

        async def op(conn: Conn) -> tuple[RunRecord, bool]:
            if parent is not None:
                await self._check_lease(conn, parent)
            cur = await conn.execute(
                "INSERT INTO stalwart_runs (run_id, workflow, workflow_ref, status, input, "
                "parent_run_id, parent_step_id, created_at, updated_at, event_count, "
                "event_head, run_digest, outcome_digest) "
                "VALUES (%s, %s, %s, 'pending', %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (run_id) DO NOTHING RETURNING run_id",
                (run_id, workflow, workflow_ref, input, parent_id, parent_step_id, now, now,
                 len(initial), digests[-1],
                 run_digest(run_id, workflow, workflow_ref, input, parent_id,
                            parent_step_id, now),
                 outcome_digest(run_id, None, None)))
            created = await cur.fetchone() is not None
            if created:
                await self._insert_rows(conn, run_id, 0, initial, digests, now)
                await self._notify(conn, run_id)
            if parent is not None and parent_events:
                await self._append_checked(conn, parent, parent_events, now, None)
            row = await (await conn.execute(_SELECT_RUN, (run_id,))).fetchone()
            assert row is not None
            return run_record(row), created

        return await self._write(op)

    async def get_run(self, run_id: str) -> RunRecord | None:
        rows = await self._read(_SELECT_RUN, (run_id,))
        return run_record(rows[0]) if rows else None

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        parent_run_id: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        clauses, args = [], []
        if status is not None:
            clauses.append("status = %s")
            args.append(str(status))
        if parent_run_id is not None:
            clauses.append("parent_run_id = %s")
            args.append(parent_run_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._read(
            f"SELECT {RUN_COLUMNS} FROM stalwart_runs {where} "
            "ORDER BY created_at DESC, created_seq DESC LIMIT %s", (*args, limit))
        return [run_record(r) for r in rows]

    async def load_events(self, run_id: str) -> list[Event]:
        # One statement, one snapshot: the run row's count and head with its events.
        rows = await self._read(
            "SELECT r.event_count, r.event_head, e.seq, e.kind, e.step_id, e.name, "
            "e.payload, e.created_at, e.digest FROM stalwart_runs r LEFT JOIN "
            "stalwart_events e ON e.run_id = r.run_id WHERE r.run_id = %s ORDER BY e.seq",
            (run_id,))
        if not rows:
            return []
        events = [tuple(r[2:]) for r in rows if r[2] is not None]
        return verify_events(run_id, events, count=rows[0][0], head=rows[0][1])

    async def run_ids(self) -> list[str]:
        """Every run id the journal mentions, in the run table or in events (for
        ``stalwart doctor``: events whose run row is gone are damage too)."""
        rows = await self._read(
            "SELECT run_id FROM (SELECT run_id, created_at, created_seq FROM stalwart_runs "
            "UNION ALL SELECT DISTINCT e.run_id, NULL::double precision, NULL::bigint "
            "FROM stalwart_events e WHERE NOT EXISTS (SELECT 1 FROM stalwart_runs r "
            "WHERE r.run_id = e.run_id)) AS ids ORDER BY created_at, created_seq")
        return [r[0] for r in rows]

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
        if limit <= 0 or (workflows is not None and not workflows):
            return []
        wf_clause = "" if workflows is None else " AND workflow = ANY(%(workflows)s)"
        params: dict[str, Any] = {"now": now, "run_id": run_id,
                                  "workflows": list(workflows or ())}
        only = "" if run_id is None else " AND run_id = %(run_id)s"
        pick = (f"SELECT run_id, event_count, event_head FROM stalwart_runs WHERE {_READY}"
                f"{wf_clause}{only} AND NOT (run_id = ANY(%(stolen)s)) "
                f"ORDER BY {READY_ORDER_SQL}, created_seq LIMIT %(limit)s "
                "FOR UPDATE SKIP LOCKED")
        steal = [s for s in steal if run_id is None or s[0] == run_id]
        payload = json.dumps({"host": owner.host, "pid": owner.pid})
        claimed = NewEvent(EventKind.RUN_CLAIMED, name=owner.id, payload=payload)

        async def op(conn: Conn) -> list[Lease]:
            # Dead owners' runs first, then expired leases, then the oldest (_claims).
            heads: dict[str, tuple[int, str]] = {}
            stolen: list[str] = []
            for sid, sowner, stoken in steal:
                if len(stolen) >= limit:
                    break
                row = await (await conn.execute(
                    "SELECT run_id, event_count, event_head FROM stalwart_runs "
                    "WHERE run_id = %(sid)s AND status = 'running' AND lease_owner = %(owner)s "
                    f"AND lease_token = %(token)s{wf_clause} FOR UPDATE SKIP LOCKED",
                    {**params, "sid": sid, "owner": sowner, "token": stoken})).fetchone()
                if row is not None and sid not in heads:
                    stolen.append(sid)
                    heads[sid] = (row[1], row[2])
            ready: list[str] = []
            if len(stolen) < limit:
                for rid, count, head in await (await conn.execute(
                        pick, {**params, "limit": limit - len(stolen),
                               "stolen": stolen})).fetchall():
                    ready.append(rid)
                    heads[rid] = (count, head)
            ids = plan_claim(stolen, ready, limit)
            if not ids:
                return []
            expires = now + lease_seconds
            digests = {rid: chain(heads[rid][1], rid, heads[rid][0] + 1, [claimed], now)[0]
                       for rid in ids}
            rows = await (await conn.execute(
                "UPDATE stalwart_runs r SET status = 'running', lease_owner = %s, "
                "lease_token = r.lease_token + 1, lease_expires_at = %s, owner_host = %s, "
                "owner_pid = %s, wake_at = NULL, wake_requested = FALSE, updated_at = %s, "
                "event_count = r.event_count + 1, event_head = v.head "
                "FROM unnest(%s::text[], %s::text[]) AS v(id, head) WHERE r.run_id = v.id "
                "RETURNING r.run_id, r.lease_token, r.event_count",
                (owner.id, expires, owner.host, owner.pid, now, ids,
                 [digests[rid] for rid in ids]))).fetchall()
            by_id = {r[0]: (r[1], r[2]) for r in rows}
            await conn.cursor().executemany(
                "INSERT INTO stalwart_events (run_id, seq, kind, step_id, name, payload, "
                "created_at, digest) VALUES (%s, %s, %s, NULL, %s, %s, %s, %s)",
                [(rid, by_id[rid][1], str(EventKind.RUN_CLAIMED), owner.id, payload, now,
                  digests[rid]) for rid in ids])
            return [Lease(rid, owner.id, by_id[rid][0], expires) for rid in ids]

        return await self._write(op)

    async def local_running(self, host: str) -> list[RunRecord]:
        rows = await self._read(
            f"SELECT {RUN_COLUMNS} FROM stalwart_runs WHERE status = 'running' "
            "AND owner_host = %s ORDER BY created_at, created_seq", (host,))
        return [run_record(r) for r in rows]

    async def renew(
        self, leases: Sequence[Lease], *, now: float, lease_seconds: float
    ) -> dict[str, Lease | None]:
        expires = now + lease_seconds

        async def op(conn: Conn) -> dict[str, Lease | None]:
            out: dict[str, Lease | None] = {}
            for lease in leases:
                cur = await conn.execute(
                    "UPDATE stalwart_runs SET lease_expires_at = %s WHERE run_id = %s AND "
                    "lease_owner = %s AND lease_token = %s AND status = 'running'",
                    (expires, lease.run_id, lease.owner, lease.token))
                out[lease.run_id] = (Lease(lease.run_id, lease.owner, lease.token, expires)
                                     if cur.rowcount else None)
            return out

        return await self._write(op) if leases else {}

    # -- the journal -----------------------------------------------------------------

    @staticmethod
    async def _check_lease(conn: Conn, lease: Lease) -> tuple[Any, ...]:
        row = await (await conn.execute(
            "SELECT status, lease_owner, lease_token, cancel_requested, event_count, "
            "parent_run_id, wake_requested, event_head FROM stalwart_runs "
            "WHERE run_id = %s FOR UPDATE",
            (lease.run_id,))).fetchone()
        if (row is None or row[0] != RunStatus.RUNNING or row[1] != lease.owner
                or row[2] != lease.token):
            raise LeaseLostError(
                f"run {lease.run_id}: lease {lease.owner}#{lease.token} is no longer current",
                run_id=lease.run_id)
        return tuple(row)

    @classmethod
    async def _insert_events(cls, conn: Conn, run_id: str, count: int, head: str,
                             events: Sequence[NewEvent], now: float) -> tuple[int, str]:
        """Insert ``events`` after the run's ``count`` events (the last with digest
        ``head``), chained (see _chain); the run's new count and head, for the caller's
        update of its row."""
        digests = chain(head, run_id, count + 1, events, now)
        await cls._insert_rows(conn, run_id, count, events, digests, now)
        return count + len(events), digests[-1] if digests else head

    @staticmethod
    async def _insert_rows(conn: Conn, run_id: str, count: int, events: Sequence[NewEvent],
                           digests: Sequence[str], now: float) -> None:
        await conn.cursor().executemany(
            "INSERT INTO stalwart_events (run_id, seq, kind, step_id, name, payload, "
            "created_at, digest) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [(run_id, count + i + 1, str(e.kind), e.step_id, e.name, e.payload, now, d)
             for i, (e, d) in enumerate(zip(events, digests, strict=True))])

    async def _wake_parent(self, conn: Conn, parent_run_id: str | None, now: float) -> None:
        if parent_run_id is None:
            return
        await conn.execute(
            "UPDATE stalwart_runs SET status = CASE WHEN status = 'waiting' THEN 'pending' "
            "ELSE status END, wake_at = CASE WHEN status = 'waiting' THEN NULL "
            "ELSE wake_at END, wake_requested = TRUE, updated_at = %s WHERE run_id = %s",
            (now, parent_run_id))
        await self._notify(conn, parent_run_id)

    async def _append_checked(self, conn: Conn, lease: Lease, events: Sequence[NewEvent],
                              now: float, finish: Finish | None) -> AppendResult:
        _, _, _, cancel, count, parent_run_id, wake_requested, head = \
            await self._check_lease(conn, lease)
        if events:
            count, head = await self._insert_events(conn, lease.run_id, count, head, events,
                                                    now)
        if finish is not None:
            status, wake_at = finish.status, finish.wake_at
            if status == RunStatus.WAITING and wake_requested:
                status, wake_at = RunStatus.PENDING, None  # a wake-up raced the park
            elif status == RunStatus.SLEEPING and cancel:
                status, wake_at = RunStatus.PENDING, None  # so did a cancel: observe it now
            await conn.execute(
                "UPDATE stalwart_runs SET status = %s, result = %s, error = %s, "
                "outcome_digest = %s, wake_at = %s, lease_owner = NULL, "
                "lease_expires_at = NULL, event_count = %s, event_head = %s, "
                "updated_at = %s WHERE run_id = %s",
                (str(status), finish.result, finish.error,
                 outcome_digest(lease.run_id, finish.result, finish.error), wake_at, count,
                 head, now, lease.run_id))
            await self._notify(conn, lease.run_id)
            if status in TERMINAL_STATUSES:
                await self._wake_parent(conn, parent_run_id, now)
        elif events:
            await conn.execute(
                "UPDATE stalwart_runs SET event_count = %s, event_head = %s, updated_at = %s "
                "WHERE run_id = %s", (count, head, now, lease.run_id))
        return AppendResult(cancel_requested=bool(cancel))

    async def append(
        self,
        lease: Lease,
        events: Sequence[NewEvent],
        *,
        now: float,
        finish: Finish | None = None,
    ) -> AppendResult:
        if self._pool is None:
            raise StoreError("the store is not open")
        await self._writable()
        fut: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Append(lease, events, now, finish, fut))
        if len(self._flushers) < self._write_concurrency:
            task = asyncio.create_task(self._flush_loop(), name="stalwart-pg-flush")
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        return await fut

    async def _flush_loop(self) -> None:
        while self._pending:
            batch = self._pending[:self._max_batch]
            del self._pending[:self._max_batch]
            batch.sort(key=lambda item: item.lease.run_id)  # one lock order for all flushers
            await self._flush(batch)

    async def _flush(self, batch: list[_Append]) -> None:
        """Write ``batch`` in one transaction, one savepoint per append."""
        outcomes: list[AppendResult | BaseException | None] = []
        notes: list[str] = []
        token = _notes.set(notes)
        try:
            async with self._connection() as conn, conn.transaction():
                for item in batch:
                    mark = len(notes)
                    try:
                        async with conn.transaction():
                            outcomes.append(await self._append_checked(
                                conn, item.lease, item.events, item.now, item.finish))
                        mark = len(notes)
                    except LeaseLostError as exc:
                        outcomes.append(exc)
                    except UniqueViolation as exc:
                        outcomes.append(LeaseLostError(
                            f"run {item.lease.run_id}: a step outcome was already recorded "
                            f"({exc})", run_id=item.lease.run_id))
                    except psycopg.Error as exc:
                        item.attempts += 1  # a deadlock victim tries again after this batch
                        outcomes.append(None if _transient(exc)
                                        and item.attempts < _TRANSIENT_ATTEMPTS
                                        else self._error(exc, "cannot write to"))
                    del notes[mark:]  # a rolled-back savepoint notifies nobody
            self.commits += 1
            self._send_notifications(notes)
        except Exception as exc:
            err = exc if isinstance(exc, StoreError) else self._error(exc, "cannot write to")
            outcomes = [err] * len(batch)
        finally:
            _notes.reset(token)
        retry = []
        for item, outcome in zip(batch, outcomes, strict=True):
            if outcome is None:
                retry.append(item)
            elif not item.future.done():
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)
        if retry:
            await asyncio.sleep(random.uniform(0, 0.02))
            self._pending[:0] = retry

    # -- signals and cancellation ----------------------------------------------------

    async def send_signal(self, run_id: str, name: str, payload: str, *, now: float) -> RunRecord:
        async def op(conn: Conn) -> RunRecord:
            row = await (await conn.execute(
                "SELECT status FROM stalwart_runs WHERE run_id = %s FOR UPDATE",
                (run_id,))).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            await conn.execute(
                "INSERT INTO stalwart_signals (run_id, name, payload, created_at) "
                "VALUES (%s, %s, %s, %s)", (run_id, name, payload, now))
            await conn.execute(
                "UPDATE stalwart_runs SET status = CASE WHEN status = 'waiting' THEN 'pending' "
                "ELSE status END, wake_at = CASE WHEN status = 'waiting' THEN NULL "
                "ELSE wake_at END, wake_requested = TRUE WHERE run_id = %s", (run_id,))
            await self._notify(conn, run_id)
            out = await (await conn.execute(_SELECT_RUN, (run_id,))).fetchone()
            assert out is not None
            return run_record(out)

        return await self._write(op)

    async def take_signal(
        self, lease: Lease, name: str, step_id: str, *, now: float
    ) -> str | None:
        async def op(conn: Conn) -> str | None:
            await self._check_lease(conn, lease)
            row = await (await conn.execute(
                "SELECT id, payload FROM stalwart_signals WHERE run_id = %s AND name = %s "
                "AND consumed_step_id IS NULL ORDER BY id LIMIT 1 FOR UPDATE",
                (lease.run_id, name))).fetchone()
            if row is None:
                return None
            await conn.execute("UPDATE stalwart_signals SET consumed_step_id = %s "
                               "WHERE id = %s", (step_id, row[0]))
            await self._append_checked(conn, lease, [NewEvent(
                EventKind.SIGNAL_RECEIVED, step_id=step_id, name=name, payload=row[1])],
                now, None)
            return str(row[1])

        return await self._write(op)

    async def request_cancel(self, run_id: str, *, now: float) -> RunRecord:
        async def cancel_one(conn: Conn, rid: str) -> None:
            row = await (await conn.execute(
                "SELECT status, lease_expires_at, event_count, parent_run_id, event_head "
                "FROM stalwart_runs WHERE run_id = %s FOR UPDATE", (rid,))).fetchone()
            if row is None or row[0] in TERMINAL_STATUSES:
                return
            status, expires, count, parent, head = row
            if status == RunStatus.RUNNING and expires is not None and expires >= now:
                await conn.execute(
                    "UPDATE stalwart_runs SET cancel_requested = TRUE, wake_requested = TRUE "
                    "WHERE run_id = %s", (rid,))
            elif open_cleanups(await (await conn.execute(
                    "SELECT kind, name FROM stalwart_events WHERE run_id = %s AND kind = "
                    "'step_completed' AND name IN (%s, %s)",
                    (rid, CLEANUP_OPENED, CLEANUP_CLOSED))).fetchall()) > 0:
                # It cleans up when cancelled (a saga): woken, not ended, by the cancel.
                await conn.execute(
                    "UPDATE stalwart_runs SET cancel_requested = TRUE, wake_requested = TRUE, "
                    "status = CASE WHEN status IN ('sleeping', 'waiting') THEN 'pending' "
                    "ELSE status END, wake_at = NULL, updated_at = %s WHERE run_id = %s",
                    (now, rid))
            else:
                count, head = await self._insert_events(
                    conn, rid, count, head, [NewEvent(EventKind.RUN_CANCELLED)], now)
                await conn.execute(
                    "UPDATE stalwart_runs SET status = 'cancelled', cancel_requested = TRUE, "
                    "lease_owner = NULL, lease_expires_at = NULL, wake_at = NULL, "
                    "event_count = %s, event_head = %s, updated_at = %s WHERE run_id = %s",
                    (count, head, now, rid))
                await self._wake_parent(conn, parent, now)
            await self._notify(conn, rid)
            for (child,) in await (await conn.execute(
                    "SELECT run_id FROM stalwart_runs WHERE parent_run_id = %s "
                    "ORDER BY created_at, created_seq", (rid,))).fetchall():
                await cancel_one(conn, child)

        async def op(conn: Conn) -> RunRecord:
            await cancel_one(conn, run_id)
            row = await (await conn.execute(_SELECT_RUN, (run_id,))).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            return run_record(row)

        return await self._write(op)

    async def redrive(self, run_id: str, *, now: float) -> RunRecord:
        async def op(conn: Conn) -> RunRecord:
            row = await (await conn.execute(
                "SELECT status, event_count, event_head FROM stalwart_runs "
                "WHERE run_id = %s FOR UPDATE",
                (run_id,))).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            if row[0] != RunStatus.DEAD_LETTERED:
                raise ConfigurationError(
                    f"run {run_id} is {row[0]}, not dead_lettered; only dead-lettered runs "
                    "can be retried", run_id=run_id)
            last = await (await conn.execute(
                "SELECT step_id FROM stalwart_events WHERE run_id = %s "
                "AND kind = 'run_dead_lettered' ORDER BY seq DESC LIMIT 1",
                (run_id,))).fetchone()
            count, head = await self._insert_events(conn, run_id, row[1], row[2], [NewEvent(
                EventKind.RUN_REDRIVEN, step_id=last[0] if last else None)], now)
            await conn.execute(
                "UPDATE stalwart_runs SET status = 'pending', result = NULL, error = NULL, "
                "outcome_digest = %s, cancel_requested = FALSE, event_count = %s, "
                "event_head = %s, updated_at = %s WHERE run_id = %s",
                (outcome_digest(run_id, None, None), count, head, now, run_id))
            await self._notify(conn, run_id)
            out = await (await conn.execute(_SELECT_RUN, (run_id,))).fetchone()
            assert out is not None
            return run_record(out)

        return await self._write(op)

    async def next_wake_at(self) -> float | None:
        rows = await self._read(
            "SELECT MIN(wake_at) FROM stalwart_runs WHERE status IN ('sleeping', 'waiting') "
            "AND wake_at IS NOT NULL")
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    # -- wake-ups --------------------------------------------------------------------

    async def wait_for_notification(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds (wall-clock) for a ``stalwart_wake`` notification.

        Returns True as soon as one arrived since the previous call (any process's new
        run, signal, finished execution or cancellation: claimable work may exist), False
        when the timeout passed first. The first call starts listening on a dedicated
        connection; a dropped listener reconnects by itself (and reports True once, since
        notifications may have been missed meanwhile). Never raises for connection
        trouble: callers keep polling as a safety net.
        """
        if self._pool is None:
            raise StoreError("the store is not open")
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="stalwart-pg-listen")
        try:
            await asyncio.wait_for(self._notified.wait(), timeout)
        except TimeoutError:
            return False
        self._notified.clear()
        return True

    async def _listen(self) -> None:
        # An outage is logged once when it breaks the listener and once when it is back
        # (the runtime logs the outage itself): not a line per reconnection attempt.
        delay, first, failing = 0.1, True, False
        while True:
            try:
                conn = await AsyncConnection.connect(
                    self._conninfo, autocommit=True,
                    connect_timeout=int(self._connect_timeout))
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    if not first:
                        self._notified.set()
                    if failing:
                        log.info("%s: LISTEN %s is back", self._url, CHANNEL)
                    first, delay, failing = False, 0.1, False
                    async for _ in conn.notifies():
                        self._notified.set()
            except psycopg.Error as exc:
                log.log(logging.DEBUG if failing else logging.WARNING,
                        "%s: LISTEN %s failed (%s); reconnecting", self._url, CHANNEL,
                        " ".join(str(exc).split()))
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def listening(self) -> None:
        """Wait until :meth:`wait_for_notification`'s listener is subscribed (tests)."""
        await self._listening.wait()

    # -- the workers registry --------------------------------------------------------

    async def save_worker(self, worker: WorkerRecord) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute(
                f"INSERT INTO stalwart_workers ({_WORKER_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (worker_id) "
                "DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, "
                "started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, "
                "concurrency = EXCLUDED.concurrency, in_flight = EXCLUDED.in_flight, "
                "lease_seconds = EXCLUDED.lease_seconds, pools = EXCLUDED.pools, "
                "stopped_at = EXCLUDED.stopped_at",
                (worker.worker_id, worker.host, worker.pid, worker.started_at,
                 worker.heartbeat_at, worker.concurrency, worker.in_flight,
                 worker.lease_seconds, list(worker.pools), worker.stopped_at))

        await self._write(op)

    async def list_workers(self, *, since: float) -> list[WorkerRecord]:
        rows = await self._read(
            f"SELECT {_WORKER_COLUMNS} FROM stalwart_workers WHERE heartbeat_at >= %s "
            "ORDER BY started_at, worker_id", (since,))
        return [WorkerRecord(
            worker_id=r[0], host=r[1], pid=r[2], started_at=r[3], heartbeat_at=r[4],
            concurrency=r[5], in_flight=r[6], lease_seconds=r[7], pools=tuple(r[8]),
            stopped_at=r[9]) for r in rows]

    async def forget_workers(self, *, before: float) -> int:
        async def op(conn: Conn) -> int:
            cur = await conn.execute("DELETE FROM stalwart_workers WHERE heartbeat_at < %s",
                                     (before,))
            return cur.rowcount

        return await self._write(op)

    # -- cluster-wide limits ---------------------------------------------------------
    # A bucket's row is locked (FOR UPDATE, in key order so two reservations never
    # deadlock) from read to write. Acquiring a bulkhead slot takes a transaction-level
    # advisory lock on the pool, so concurrent acquirers count the slots one at a time.

    @property
    def cluster_limits_default(self) -> bool:
        return True  # this store exists to be shared by many workers

    @staticmethod
    async def _lock_buckets(conn: Conn, draws: Sequence[BucketDraw], now: float
                            ) -> list[BucketState | None]:
        keys = sorted({d.key for d in draws})
        rows = await (await conn.execute(
            "SELECT key, tokens, updated_at FROM stalwart_rate_buckets WHERE key = ANY(%s) "
            "ORDER BY key FOR UPDATE", (keys,))).fetchall()
        found = {r[0]: BucketState(r[1], r[2]) for r in rows}
        missing = [k for k in keys if k not in found]
        if missing:
            # Create them full, then lock them: a racing creator's row wins (DO NOTHING).
            by_key = {d.key: d for d in draws}
            await conn.cursor().executemany(
                "INSERT INTO stalwart_rate_buckets (key, tokens, updated_at, capacity, "
                "refill_per_second) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING",
                [(k, by_key[k].capacity, now, by_key[k].capacity,
                  by_key[k].refill_per_second) for k in missing])
            rows = await (await conn.execute(
                "SELECT key, tokens, updated_at FROM stalwart_rate_buckets "
                "WHERE key = ANY(%s) ORDER BY key FOR UPDATE", (missing,))).fetchall()
            found.update({r[0]: BucketState(r[1], r[2]) for r in rows})
        return [found[d.key] for d in draws]

    @staticmethod
    async def _save_buckets(conn: Conn, draws: Sequence[BucketDraw],
                            states: Sequence[BucketState]) -> None:
        await conn.cursor().executemany(
            "UPDATE stalwart_rate_buckets SET tokens = %s, updated_at = %s, capacity = %s, "
            "refill_per_second = %s WHERE key = %s",
            [(st.tokens, st.updated_at, d.capacity, d.refill_per_second, d.key)
             for d, st in zip(draws, states, strict=True)])

    async def rate_reserve(self, draws: Sequence[BucketDraw], *, now: float,
                           max_wait: float | None = None) -> Reservation:
        async def op(conn: Conn) -> Reservation:
            states = await self._lock_buckets(conn, draws, now)
            reservation, after = plan_reservation(states, draws, now=now, max_wait=max_wait)
            await self._save_buckets(conn, draws, after)
            return reservation

        return await self._write(op)

    async def rate_adjust(self, draws: Sequence[BucketDraw], *, now: float) -> tuple[float, ...]:
        async def op(conn: Conn) -> tuple[float, ...]:
            states = await self._lock_buckets(conn, draws, now)
            after = [plan_adjustment(st, d, now=now) for st, d in zip(states, draws, strict=True)]
            await self._save_buckets(conn, draws, after)
            return tuple(st.tokens for st in after)

        return await self._write(op)

    async def bulkhead_acquire(self, pool: str, holder: str, *, max_concurrent: int,
                               now: float, lease_seconds: float) -> bool:
        async def op(conn: Conn) -> bool:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('stalwart-bulkhead'), "
                "hashtext(current_schema() || ':' || %s))", (pool,))
            await conn.execute("DELETE FROM stalwart_bulkhead_slots WHERE pool = %s "
                               "AND expires_at < %s", (pool, now))
            row = await (await conn.execute(
                "SELECT count(*), bool_or(holder = %s) FROM stalwart_bulkhead_slots "
                "WHERE pool = %s", (holder, pool))).fetchone()
            assert row is not None
            if not row[1] and row[0] >= max_concurrent:
                return False
            await conn.execute(
                "INSERT INTO stalwart_bulkhead_slots (pool, holder, acquired_at, expires_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (pool, holder) "
                "DO UPDATE SET expires_at = EXCLUDED.expires_at",
                (pool, holder, now, now + lease_seconds))
            return True

        return await self._write(op)

    async def bulkhead_renew(self, holders: Sequence[str], *, now: float,
                             lease_seconds: float) -> set[str]:
        async def op(conn: Conn) -> set[str]:
            rows = await (await conn.execute(
                "UPDATE stalwart_bulkhead_slots SET expires_at = %s WHERE holder = ANY(%s) "
                "RETURNING holder", (now + lease_seconds, list(holders)))).fetchall()
            return {r[0] for r in rows}

        return await self._write(op) if holders else set()

    async def bulkhead_release(self, pool: str, holder: str) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute("DELETE FROM stalwart_bulkhead_slots WHERE pool = %s "
                               "AND holder = %s", (pool, holder))

        await self._write(op)

    async def bulkhead_active(self, pool: str, *, now: float) -> int:
        rows = await self._read("SELECT count(*) FROM stalwart_bulkhead_slots "
                                "WHERE pool = %s AND expires_at >= %s", (pool, now))
        return int(rows[0][0])

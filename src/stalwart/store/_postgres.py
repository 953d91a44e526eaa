"""The shared journal: PostgreSQL, for many workers on many machines.

Same semantics as :class:`~stalwart.store.SQLiteStore` (both pass
``tests/store/test_conformance.py``); what differs is how they are obtained:

* **Rules.** Every transition is planned by ``_runs`` (lock the row, plan, write), as in
  the other stores; ``_postgres_rows`` only reads and writes the rows.
* **Fencing in one statement.** The store remembers each run it holds a lease on as it
  last wrote it, plans an append from that, and writes it with one statement that
  compares the row with what the plan read (owner, token, count, head, flags), locks
  it and writes the events and the row — or writes nothing when the row changed
  meanwhile (a cancel, a wake-up, another owner): then it locks the row, plans again
  and writes (``SELECT … FOR UPDATE``, then the write, in one transaction). A step
  thus costs one round trip.
* **Claims** pick ready runs with ``FOR UPDATE SKIP LOCKED``: racing workers each get
  different runs and never wait on one another.
* **Group commit.** Appends queue while earlier ones are being written; a flusher takes
  the queue and writes it in one statement (all its runs' compare-and-sets), so a
  fenced-off writer fails alone. A few flushers run at once, each on its own pooled
  connection; one run's appends go through one flusher at a time, in order.
* **Wake-ups.** New runs, signals, finished executions and cancellations send
  ``NOTIFY stalwart_wake`` (payload: the run id) right after they commit, coalesced by
  one notifier per store (not inside the write: PostgreSQL serializes the commits of
  transactions that NOTIFY, a convoy that stalled concurrent workers);
  :meth:`PostgresStore.wait_for_notification` lets a scheduler sleep until one comes
  (``_postgres_wake``). Polling stays the safety net: a notification can be lost while
  a listener reconnects.
* **Errors.** Connection failures, pool timeouts, deadlocks and serialization failures
  become :class:`~stalwart.errors.StoreError` with ``retryable=True``. Deadlocks and
  serialization failures are first retried here as the store's ``retry`` says: a
  :class:`~stalwart.Runtime` gives it one built from :class:`~stalwart.Retry` (full
  jitter, on the runtime's clock; see ``stalwart.engine._store_retry``).

The tables (``stalwart_meta``, ``stalwart_runs``, ``stalwart_events``, ``stalwart_blobs``,
``stalwart_signals``) live in the first schema of the connection's ``search_path``
(``?options=-csearch_path%3Dmyschema`` in the URL picks one). ``stalwart_meta`` holds the
schema version; :meth:`PostgresStore.open` creates the tables or migrates an older schema,
under an advisory lock so that workers starting together do it once.

This module holds the store's plumbing (pool, access, transactions and their retries),
its runs, leases, signals and the group commit's flushers. The rest sits beside it,
each part in a module of its own: the group commit's bookkeeping and fast-path planning
(``_postgres_batch``), the tables besides the runs (the workers registry, cluster-wide
limits, blackboards, the approvals query: ``_postgres_ops``), the wake-ups
(``_postgres_wake``), the row writer (``_postgres_rows``), the schema
(``_postgres_schema``) and the URL with the errors no retry cures (``_pg_conninfo``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, final

import psycopg
from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from ..errors import (
    ConfigurationError,
    LeaseLostError,
    NotAStalwartStoreError,
    StoreError,
)
from . import _postgres_ops as ops
from ._base import (
    CLEANUP_CLOSED,
    CLEANUP_OPENED,
    INHERIT,
    AppendResult,
    ApprovalJournal,
    Event,
    Finish,
    Inherit,
    Lease,
    NewEvent,
    Owner,
    RunRecord,
    RunStatus,
    TransientRetry,
    WorkerRecord,
    open_cleanups,
)
from ._blobs import resolve, split
from ._board import BoardEntry, BoardOp, BoardWatch
from ._chain import RUN_COLUMNS, run_record, verify_events
from ._limits import BucketDraw, LimitsView, Reservation
from ._pg_conninfo import (
    check_conninfo,
    invalid_option,
    printable_url,
    refused_for_good,
    transient,
)
from ._postgres_batch import Append, Held, Queue, merged, plan_from, settle
from ._postgres_rows import lock_state, write_plans
from ._postgres_schema import Access, check_or_create
from ._postgres_wake import CHANNEL, Listener, Notifier, collected, notify
from ._runs import (
    APPEND_READS,
    READY_ORDER_SQL,
    STATE_COLUMNS,
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

__all__ = ["CHANNEL", "PostgresStore"]

log = logging.getLogger("stalwart.store.postgres")

T = TypeVar("T")
Conn = AsyncConnection[TupleRow]

_SELECT_RUN = f"SELECT {RUN_COLUMNS} FROM stalwart_runs WHERE run_id = %s"


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
        retry: how to wait out a deadlock or a serialization failure of the store's own
            transactions before trying again (see :data:`~stalwart.store.TransientRetry`).
            By default a :class:`~stalwart.Runtime` that uses the store gives it its own
            (a :class:`~stalwart.Retry` of 5 attempts, 20-160 ms, full jitter); ``None``
            never retries (the error reaches the caller, retryable).

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
        retry: TransientRetry | Inherit | None = INHERIT,
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
        self._queue = Queue()
        self._flushers: set[asyncio.Task[None]] = set()
        self._listener = Listener(url, connect_timeout=connect_timeout, url=self._url)
        self._notifier = Notifier(self._connection, lambda: self._pool is not None, self._url)
        self._retry = retry
        self._held = Held()
        self.commits = 0
        """How many write transactions committed (for tests and benchmarks)."""

    @property
    def url(self) -> str:
        return self._url

    def inherit_retry(self, retry: TransientRetry) -> None:
        """Use ``retry`` unless one was given (or ``None``) when the store was made: how a
        :class:`~stalwart.Runtime` gives its store the library's retry policy."""
        if self._retry is INHERIT:
            self._retry = retry

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
        await self._listener.stop()
        while self._flushers:
            await asyncio.gather(*self._flushers, return_exceptions=True)
        await self._notifier.idle()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # -- plumbing --------------------------------------------------------------------

    def _error(self, exc: BaseException, what: str) -> StoreError:
        retryable = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and \
            not refused_for_good(exc)
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
        async def fetch(conn: Conn) -> list[TupleRow]:
            return await (await conn.execute(sql, args)).fetchall()

        return await self._query(fetch)

    async def _query(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """``fn`` on a pooled connection, outside a transaction: reads."""
        await self._readable()
        try:
            async with self._connection() as conn:
                return await fn(conn)
        except psycopg.Error as exc:
            raise self._error(exc, "cannot read") from exc

    async def _write(self, fn: Callable[[Conn], Awaitable[T]], *,
                     transaction: bool = True) -> T:
        """Run ``fn`` in a transaction (``transaction=False``: ``fn`` makes one write,
        atomic by itself, and needs no BEGIN and COMMIT), again after a deadlock or a
        serialization failure as long as the store's ``retry`` says so; notify once it
        committed."""
        await self._writable()
        attempt = 0
        while True:
            attempt += 1
            with collected() as notes:
                try:
                    async with self._connection() as conn:
                        if transaction:
                            async with conn.transaction():
                                out = await fn(conn)
                        else:
                            out = await fn(conn)
                    self.commits += 1
                    self._notifier.send(notes)
                    return out
                except psycopg.Error as exc:
                    if not await self._again(attempt, exc):
                        raise self._error(exc, "cannot write to") from exc

    async def _again(self, attempt: int, exc: psycopg.Error) -> bool:
        """Whether to try a transaction that failed with ``exc`` once more (after the
        retry's wait): only a deadlock or a serialization failure, as ``retry`` says."""
        retry = self._retry
        if not transient(exc) or retry is None or retry is INHERIT:
            return False
        return await retry(attempt, exc)

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
        new = plan_create(run_id=run_id, workflow=workflow, input=input, now=now,
                          workflow_ref=workflow_ref,
                          parent_run_id=parent.run_id if parent else None,
                          parent_step_id=parent_step_id, events=events)
        rec = new.record
        insert = (
            "WITH ins AS (INSERT INTO stalwart_runs (run_id, workflow, workflow_ref, status, "
            "input, parent_run_id, parent_step_id, created_at, updated_at, event_count, "
            "event_head, run_digest, outcome_digest) VALUES (%s, %s, %s, %s, %s, %s, %s, "
            "%s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO NOTHING RETURNING run_id), "
            "ev AS (INSERT INTO stalwart_events (run_id, seq, kind, step_id, name, payload, "
            "created_at, digest, payload_ref) SELECT * FROM unnest(%s::text[], %s::int[], "
            "%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::text[], "
            "%s::text[]) WHERE EXISTS (SELECT 1 FROM ins)), "
            "bl AS (INSERT INTO stalwart_blobs (hash, content) SELECT * FROM "
            "unnest(%s::text[], %s::text[]) WHERE EXISTS (SELECT 1 FROM ins) "
            "ON CONFLICT (hash) DO NOTHING) SELECT count(*) FROM ins")
        rows, blobs = split(new.events)
        args = [run_id, workflow, workflow_ref, str(rec.status), input, rec.parent_run_id,
                parent_step_id, now, now, new.state.event_count, new.state.event_head,
                new.run_digest, new.outcome_digest,
                *([list(c) for c in zip(*rows, strict=True)] or [[]] * 9),
                *([list(c) for c in zip(*blobs, strict=True)] or [[], []])]

        async def op(conn: Conn) -> tuple[RunRecord, bool, Plan | None]:
            parent_plan = None
            if parent is not None:
                parent_plan = plan_append(await lock_state(conn, parent.run_id), parent,
                                          parent_events, now=now)
            row = await (await conn.execute(insert, args)).fetchone()
            created = row is not None and row[0] == 1
            if created:
                await notify(conn, run_id)
            if parent_plan is not None and parent_events:
                await self._write_plan(conn, parent_plan, now)
            if created:
                return rec, True, parent_plan
            # READ COMMITTED: a conflicting insert has committed once ours returned.
            existing = await (await conn.execute(_SELECT_RUN, (run_id,))).fetchone()
            assert existing is not None
            return run_record(existing), False, parent_plan

        try:
            # Without a parent the insert is one statement: no transaction around it.
            record, created, parent_plan = await self._write(op, transaction=parent is not None)
        except LeaseLostError:
            if parent is not None:
                self._held.forget(parent)
            raise
        if parent_plan is not None and parent_events:
            self._held.hold(parent_plan.after)
        return record, created

    async def get_run(self, run_id: str) -> RunRecord | None:
        rows = await self._read(_SELECT_RUN, (run_id,))
        return run_record(rows[0]) if rows else None

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
                clauses.append(f"{column} {cmp} %s")
                args.append(value)
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
            "e.payload, e.created_at, e.digest, e.payload_ref, b.content FROM "
            "stalwart_runs r LEFT JOIN stalwart_events e ON e.run_id = r.run_id LEFT JOIN "
            "stalwart_blobs b ON b.hash = e.payload_ref WHERE r.run_id = %s ORDER BY e.seq",
            (run_id,))
        if not rows:
            return []
        events = resolve(run_id, [tuple(r[2:]) for r in rows if r[2] is not None])
        return verify_events(run_id, events, count=rows[0][0], head=rows[0][1])

    async def approval_journals(self, run_ids: Sequence[str]) -> list[ApprovalJournal]:
        return await self._query(lambda conn: ops.approval_journals(conn, run_ids))

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
        only = "" if run_id is None else " AND run_id = %(run_id)s"
        params: dict[str, Any] = {"now": now, "run_id": run_id,
                                  "workflows": list(workflows or ())}
        steal = [s for s in steal if run_id is None or s[0] == run_id]
        pick = (f"SELECT {STATE_COLUMNS} FROM stalwart_runs WHERE {ready_sql('%(now)s')}"
                f"{wf_clause}{only} AND NOT (run_id = ANY(%(stolen)s)) "
                f"ORDER BY {READY_ORDER_SQL}, created_seq LIMIT %(limit)s "
                "FOR UPDATE SKIP LOCKED")

        async def op(conn: Conn) -> list[Plan]:
            states: dict[str, RunState] = {}
            stolen: dict[str, tuple[str, int]] = {}
            if steal:
                for row in await (await conn.execute(
                        f"SELECT {STATE_COLUMNS} FROM stalwart_runs WHERE run_id = "
                        f"ANY(%(ids)s){wf_clause} ORDER BY run_id FOR UPDATE SKIP LOCKED",
                        {**params, "ids": [s[0] for s in steal]})).fetchall():
                    states[row[0]] = state_from_row(row)
                for sid, sowner, stoken in steal:
                    if (sid in states and sid not in stolen and len(stolen) < limit
                            and can_steal(states[sid], sowner, stoken)):
                        stolen[sid] = (sowner, stoken)
            ready: list[str] = []
            if len(stolen) < limit:
                for row in await (await conn.execute(
                        pick, {**params, "limit": limit - len(stolen),
                               "stolen": list(stolen)})).fetchall():
                    states[row[0]] = state_from_row(row)
                    ready.append(row[0])
            plans = [plan for rid in claim_order(list(stolen), ready, limit)
                     if (plan := plan_claim(states[rid], owner, now=now,
                                            lease_seconds=lease_seconds,
                                            steal=stolen.get(rid))) is not None]
            await write_plans(conn, plans)
            return plans

        plans = await self._write(op)
        for plan in plans:  # the next append of each is planned from what the claim wrote
            self._held.hold(plan.after)
        return [Lease(plan.after.run_id, owner.id, plan.after.lease_token,
                      now + lease_seconds) for plan in plans]

    async def local_running(self, host: str) -> list[RunRecord]:
        rows = await self._read(
            f"SELECT {RUN_COLUMNS} FROM stalwart_runs WHERE status = 'running' "
            "AND owner_host = %s ORDER BY created_at, created_seq", (host,))
        return [run_record(r) for r in rows]

    async def renew(
        self, leases: Sequence[Lease], *, now: float, lease_seconds: float
    ) -> dict[str, Lease | None]:
        if not leases:
            return {}

        async def op(conn: Conn) -> dict[str, Lease | None]:
            out: dict[str, Lease | None] = {}
            for lease in sorted(leases, key=lambda lease: lease.run_id):  # lock order
                plan = plan_renew(await lock_state(conn, lease.run_id), lease, now=now,
                                  lease_seconds=lease_seconds)
                if plan is not None:
                    await write_plans(conn, [plan])
                    self._held.renewed(plan.after)
                out[lease.run_id] = (None if plan is None else Lease(
                    lease.run_id, lease.owner, lease.token, now + lease_seconds))
            return out

        out = await self._write(op)
        for lease in leases:
            if out[lease.run_id] is None:
                self._held.forget(lease)
        return {lease.run_id: out[lease.run_id] for lease in leases}

    # -- the journal -----------------------------------------------------------------

    async def _write_plan(self, conn: Conn, plan: Plan, now: float) -> None:
        """Write ``plan`` (its row is locked by this transaction), notify, and wake the
        run it names."""
        await write_plans(conn, [plan])
        if plan.notify:
            await notify(conn, plan.after.run_id)
        if plan.wake is not None and (woken := await lock_state(conn, plan.wake)) is not None:
            await self._write_plan(conn, plan_wake(woken, now=now), now)

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
        self._queue.add(Append(lease, events, now, finish, fut))
        if len(self._flushers) < self._write_concurrency:
            task = asyncio.create_task(self._flush_loop(), name="stalwart-pg-flush")
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        return await fut

    async def _flush_loop(self) -> None:
        while batch := self._queue.take(self._max_batch):
            runs = {item.lease.run_id for item in batch}
            try:
                await self._flush(batch)
            except BaseException as exc:  # nobody may wait for ever on an append
                if not isinstance(exc, StoreError | psycopg.Error | asyncio.CancelledError):
                    log.exception("%s: an append batch failed unexpectedly", self._url)
                err = exc if isinstance(exc, StoreError) else self._error(
                    exc, "cannot write to")
                for item in batch:
                    settle(item.future, err)
                if not isinstance(exc, Exception):
                    raise
            finally:
                self._queue.release(runs)

    async def _flush(self, batch: list[Append]) -> None:
        """Write ``batch``: each run's leading appends planned from the state this store
        last wrote and written conditionally, all in one statement; whatever that could
        not write (a row that changed meanwhile), one append per transaction after
        locking its row."""
        runs: dict[str, list[Append]] = {}
        for item in batch:
            runs.setdefault(item.lease.run_id, []).append(item)
        fast: list[tuple[Plan, list[tuple[Append, Plan]]]] = []
        slow: dict[str, list[Append]] = {}
        for run_id, items in runs.items():
            planned = plan_from(self._held.get(run_id), items)
            if planned:
                fast.append((merged([plan for _, plan in planned]), planned))
            slow[run_id] = items[len(planned):]
        if fast:
            written = await self._write_fast([plan for plan, _ in fast])
            for plan, planned in fast:
                run_id = plan.after.run_id
                if written is None or run_id not in written:
                    slow[run_id] = [item for item, _ in planned] + slow[run_id]
                    continue
                self._held.hold(plan.after)
                for item, part in planned:
                    settle(item.future, AppendResult(part.before.cancel_requested))
        for items in slow.values():
            for item in items:
                await self._append_locked(item)

    async def _write_fast(self, plans: list[Plan]) -> set[str] | None:
        """The conditional write of ``plans``; the ids written, or ``None`` when the
        statement failed as a whole (each append then takes the locked path, which
        reports its own error)."""
        try:
            async with self._connection() as conn:
                written = await write_plans(conn, plans, guard=APPEND_READS)
        except (psycopg.Error, StoreError):
            return None
        self.commits += 1
        self._notifier.send([p.after.run_id for p in plans
                                  if p.notify and p.after.run_id in written])
        return written

    async def _append_locked(self, item: Append) -> None:
        """One append: lock the run's row, plan from it, write (retried as ``_write``
        retries)."""
        async def op(conn: Conn) -> Plan:
            plan = plan_append(await lock_state(conn, item.lease.run_id), item.lease,
                               item.events, now=item.now, finish=item.finish)
            try:
                await self._write_plan(conn, plan, item.now)
            except UniqueViolation as exc:
                raise LeaseLostError(
                    f"run {item.lease.run_id}: a step outcome was already recorded ({exc})",
                    run_id=item.lease.run_id) from exc
            return plan

        try:
            plan = await self._write(op)
        except LeaseLostError as exc:
            self._held.forget(item.lease)
            settle(item.future, exc)
        except Exception as exc:
            settle(item.future, exc if isinstance(exc, StoreError)
                    else self._error(exc, "cannot write to"))
        else:
            self._held.hold(plan.after)
            settle(item.future, AppendResult(plan.before.cancel_requested))

    # -- signals and cancellation ----------------------------------------------------

    async def send_signal(self, run_id: str, name: str, payload: str, *, now: float) -> RunRecord:
        async def op(conn: Conn) -> RunRecord:
            plan = plan_wake(require(await lock_state(conn, run_id), run_id), now=now)
            await conn.execute(
                "INSERT INTO stalwart_signals (run_id, name, payload, created_at) "
                "VALUES (%s, %s, %s, %s)", (run_id, name, payload, now))
            await self._write_plan(conn, plan, now)
            out = await (await conn.execute(_SELECT_RUN, (run_id,))).fetchone()
            assert out is not None
            return run_record(out)

        return await self._write(op)

    async def pending_signals(self, run_id: str) -> list[tuple[str, str]]:
        rows = await self._read(
            "SELECT name, payload FROM stalwart_signals WHERE run_id = %s AND "
            "consumed_step_id IS NULL ORDER BY id", (run_id,))
        return [(str(r[0]), str(r[1])) for r in rows]

    async def take_signal(
        self, lease: Lease, name: str, step_id: str, *, now: float
    ) -> str | None:
        async def op(conn: Conn) -> tuple[str, Plan] | None:
            state = check_lease(await lock_state(conn, lease.run_id), lease)
            row = await (await conn.execute(
                "SELECT id, payload FROM stalwart_signals WHERE run_id = %s AND name = %s "
                "AND consumed_step_id IS NULL ORDER BY id LIMIT 1 FOR UPDATE",
                (lease.run_id, name))).fetchone()
            if row is None:
                return None
            plan = plan_take_signal(state, lease, name=name, step_id=step_id,
                                    payload=row[1], now=now)
            await conn.execute("UPDATE stalwart_signals SET consumed_step_id = %s "
                               "WHERE id = %s", (step_id, row[0]))
            await self._write_plan(conn, plan, now)
            return str(row[1]), plan

        try:
            out = await self._write(op)
        except LeaseLostError:
            self._held.forget(lease)
            raise
        if out is None:
            return None
        self._held.hold(out[1].after)
        return out[0]

    async def request_cancel(self, run_id: str, *, now: float) -> RunRecord:
        async def cancel(conn: Conn, rid: str) -> None:
            state = await lock_state(conn, rid)
            if state is None:
                return
            plan = plan_cancel(state, now=now, cleanups=0 if state.is_terminal else
                               open_cleanups(await (await conn.execute(
                                   "SELECT kind, name FROM stalwart_events WHERE run_id = %s "
                                   "AND kind = 'step_completed' AND name IN (%s, %s)",
                                   (rid, CLEANUP_OPENED, CLEANUP_CLOSED))).fetchall()))
            await self._write_plan(conn, plan, now)
            if plan.cascade:
                for (child,) in await (await conn.execute(
                        "SELECT run_id FROM stalwart_runs WHERE parent_run_id = %s "
                        "ORDER BY created_at, created_seq", (rid,))).fetchall():
                    await cancel(conn, child)

        async def op(conn: Conn) -> RunRecord:
            require(await lock_state(conn, run_id), run_id)
            await cancel(conn, run_id)
            row = await (await conn.execute(_SELECT_RUN, (run_id,))).fetchone()
            assert row is not None
            return run_record(row)

        return await self._write(op)

    async def redrive(self, run_id: str, *, now: float) -> RunRecord:
        async def op(conn: Conn) -> RunRecord:
            state = require(await lock_state(conn, run_id), run_id)
            last = await (await conn.execute(
                "SELECT step_id FROM stalwart_events WHERE run_id = %s "
                "AND kind = 'run_dead_lettered' ORDER BY seq DESC LIMIT 1",
                (run_id,))).fetchone()
            await self._write_plan(conn, plan_redrive(state, last[0] if last else None,
                                                      now=now), now)
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
        return await self._listener.wait(timeout)

    async def listening(self) -> None:
        """Wait until :meth:`wait_for_notification`'s listener is subscribed (tests)."""
        await self._listener.subscribed()

    # -- the workers registry, cluster-wide limits, blackboards (_postgres_ops) ---------

    async def save_worker(self, worker: WorkerRecord) -> None:
        await self._write(lambda conn: ops.save_worker(conn, worker))

    async def list_workers(self, *, since: float) -> list[WorkerRecord]:
        return await self._query(lambda conn: ops.list_workers(conn, since=since))

    async def forget_workers(self, *, before: float) -> int:
        return await self._write(lambda conn: ops.forget_workers(conn, before=before))

    @property
    def cluster_limits_default(self) -> bool:
        return True  # this store exists to be shared by many workers

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
        return await self._query(lambda conn: ops.limits(conn, now=now))

    async def bulkhead_active(self, pool: str, *, now: float) -> int:
        return await self._query(lambda conn: ops.bulkhead_active(conn, pool, now=now))

    async def board_apply(self, op: BoardOp, *, now: float) -> BoardEntry | None:
        return await self._write(lambda conn: ops.board_apply(conn, op, now=now))

    async def board_entries(self, board: str, *, prefix: str = "") -> list[BoardEntry]:
        return await self._query(lambda conn: ops.board_entries(conn, board, prefix=prefix))

    async def board_names(self) -> list[str]:
        return await self._query(ops.board_names)

    async def board_watches(self, board: str) -> list[BoardWatch]:
        return await self._query(lambda conn: ops.board_watches(conn, board))

    async def board_watch(self, watch: BoardWatch) -> None:
        await self._write(lambda conn: ops.board_watch(conn, watch), transaction=False)

    async def board_unwatch(self, run_id: str, signal: str) -> None:
        await self._write(lambda conn: ops.board_unwatch(conn, run_id, signal),
                          transaction=False)

    async def board_wake(self, entry: BoardEntry, *, now: float) -> list[str]:
        return await self._write(lambda conn: ops.board_wake(
            conn, entry, now=now, write_plan=self._write_plan))

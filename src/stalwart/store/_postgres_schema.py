"""The PostgreSQL journal's tables: their definition, version check and migrations.

``stalwart_meta`` says whose tables these are (``app = 'stalwart'``) and which schema
version they follow. A store that writes creates the tables in the connection's
current schema when none of them exist and the schema holds nothing else (or when told
to: ``PostgresStore(create=True)``, ``stalwart worker --create``); migrates them when
they are older and every step is in :data:`MIGRATIONS`; and refuses (changing nothing)
a newer schema, tables that merely share our names, or a schema that holds another
application's tables and no journal. A store that only reads creates, migrates and
locks nothing: where there is no journal it says so.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from ..errors import ConfigurationError, NotAStalwartStoreError, SchemaVersionError
from ._approvals import approval_events_sql
from ._base import APP_ID
from ._chain import GENESIS, event_digest, outcome_digest, run_digest

__all__ = ["INDEXES", "MIGRATIONS", "OPERATIONAL", "SCHEMA", "SCHEMA_VERSION", "TABLES",
           "WORKERS_SCHEMA", "check_or_create"]

SCHEMA_VERSION = 5
"""The version of these tables. It is PostgreSQL's own (SQLite's file layout has its
own number): bump it with a :data:`MIGRATIONS` entry whenever ``SCHEMA`` changes.

2. ``stalwart_rate_buckets`` and ``stalwart_bulkhead_slots``: the cluster-wide limits
   (a stalwart that predates them would not honour them, so they are versioned).
3. Checksums (see ``_chain``): ``stalwart_events.digest`` chains each event to the one
   before it; ``stalwart_runs`` keeps the chain's head and digests of the run and its
   outcome. The migration hashes the events as they are then.
4. Blackboards (see ``_board``): ``stalwart_board_entries`` and ``stalwart_board_ops``.
5. Blobs (see ``_blobs``): ``stalwart_events.payload_ref`` and ``stalwart_blobs``, large
   payloads stored once by content. Events written before keep their payloads inline."""

log = logging.getLogger("stalwart.store.postgres")

Conn = AsyncConnection[TupleRow]

_RUNS_COLUMNS = frozenset({
    "run_id", "created_seq", "workflow", "workflow_ref", "status", "input", "result", "error",
    "parent_run_id", "parent_step_id", "created_at", "updated_at", "wake_at", "lease_owner",
    "lease_token", "lease_expires_at", "owner_host", "owner_pid", "cancel_requested",
    "wake_requested", "event_count", "event_head", "run_digest", "outcome_digest"})
TABLES = {
    "stalwart_meta": frozenset({"key", "value"}),
    "stalwart_runs": _RUNS_COLUMNS,
    "stalwart_events": frozenset({"run_id", "seq", "kind", "step_id", "name", "payload",
                                  "created_at", "digest", "payload_ref"}),
    "stalwart_blobs": frozenset({"hash", "content"}),
    "stalwart_signals": frozenset({"id", "run_id", "name", "payload", "created_at",
                                   "consumed_step_id"}),
    "stalwart_rate_buckets": frozenset({"key", "tokens", "updated_at", "capacity",
                                        "refill_per_second"}),
    "stalwart_bulkhead_slots": frozenset({"pool", "holder", "acquired_at", "expires_at"}),
    "stalwart_board_entries": frozenset({
        "board", "key", "version", "value", "state", "verified_by", "note", "provenance",
        "sources", "created_at", "updated_at", "taken_by", "taken_at"}),
    "stalwart_board_ops": frozenset({"op_key", "board", "entry", "created_at"}),
}

_LIMITS = (
    """CREATE TABLE stalwart_rate_buckets (
    key TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    capacity DOUBLE PRECISION NOT NULL,
    refill_per_second DOUBLE PRECISION NOT NULL
)""",
    """CREATE TABLE stalwart_bulkhead_slots (
    pool TEXT NOT NULL,
    holder TEXT NOT NULL,
    acquired_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (pool, holder)
)""",
    "CREATE INDEX stalwart_bulkhead_slots_holder ON stalwart_bulkhead_slots (holder)",
)

_BOARD = (
    """CREATE TABLE stalwart_board_entries (
    board TEXT NOT NULL,
    key TEXT NOT NULL,
    version BIGINT NOT NULL,
    value TEXT NOT NULL,
    state TEXT NOT NULL,
    verified_by TEXT,
    note TEXT,
    provenance TEXT NOT NULL,
    sources TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    taken_by TEXT,
    taken_at DOUBLE PRECISION,
    PRIMARY KEY (board, key)
)""",
    """CREATE TABLE stalwart_board_ops (
    op_key TEXT PRIMARY KEY,
    board TEXT NOT NULL,
    entry TEXT,
    created_at DOUBLE PRECISION NOT NULL
)""",
)

SCHEMA = """
CREATE TABLE stalwart_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE stalwart_runs (
    run_id TEXT PRIMARY KEY,
    created_seq BIGINT GENERATED ALWAYS AS IDENTITY,
    workflow TEXT NOT NULL,
    workflow_ref TEXT,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    result TEXT,
    error TEXT,
    parent_run_id TEXT,
    parent_step_id TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    wake_at DOUBLE PRECISION,
    lease_owner TEXT,
    lease_token BIGINT NOT NULL DEFAULT 0,
    lease_expires_at DOUBLE PRECISION,
    owner_host TEXT,
    owner_pid INTEGER,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    wake_requested BOOLEAN NOT NULL DEFAULT FALSE,
    event_count INTEGER NOT NULL DEFAULT 0,
    event_head TEXT NOT NULL DEFAULT '""" + GENESIS + """',
    run_digest TEXT NOT NULL DEFAULT '',
    outcome_digest TEXT NOT NULL DEFAULT ''
);
CREATE INDEX stalwart_runs_status ON stalwart_runs (status, wake_at);
CREATE INDEX stalwart_runs_parent ON stalwart_runs (parent_run_id);
CREATE INDEX stalwart_runs_created ON stalwart_runs (created_at, created_seq);
CREATE TABLE stalwart_events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    step_id TEXT,
    name TEXT,
    payload TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    digest TEXT NOT NULL DEFAULT '',
    payload_ref TEXT,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE stalwart_blobs (hash TEXT PRIMARY KEY, content TEXT NOT NULL);
CREATE UNIQUE INDEX stalwart_events_one_outcome ON stalwart_events (run_id, step_id)
    WHERE kind = 'step_completed';
CREATE TABLE stalwart_signals (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    consumed_step_id TEXT
);
CREATE INDEX stalwart_signals_pending ON stalwart_signals (run_id, name, id)
    WHERE consumed_step_id IS NULL;
""" + ";\n".join(_LIMITS) + ";\n" + ";\n".join(_BOARD) + ";\n"

WORKERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS stalwart_workers (
    worker_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    concurrency INTEGER NOT NULL,
    in_flight INTEGER NOT NULL,
    lease_seconds DOUBLE PRECISION NOT NULL,
    pools TEXT[] NOT NULL,
    stopped_at DOUBLE PRECISION
)
"""
"""The workers registry: operational state that no run depends on. It is created when
missing (under the schema lock, after the journal's tables check out) and ignored by
stalwarts that predate it, so adding it did not change :data:`SCHEMA_VERSION`."""

OPERATIONAL = (
    WORKERS_SCHEMA,
    """CREATE TABLE IF NOT EXISTS stalwart_board_watches (
    run_id TEXT NOT NULL,
    signal TEXT NOT NULL,
    board TEXT NOT NULL,
    pattern TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, signal)
)""",
)
"""Operational state no run depends on, created when missing as the workers registry
is: the registry, and the blackboards' watches (``_board``: a waiter that a stalwart
predating them does not wake sees the entry at its next poll)."""


INDEXES = {
    "stalwart_events_approvals": "CREATE INDEX IF NOT EXISTS stalwart_events_approvals ON "
                                 f"stalwart_events (run_id, seq) WHERE {approval_events_sql()}",
    "stalwart_board_watches_board": "CREATE INDEX IF NOT EXISTS stalwart_board_watches_board "
                                    "ON stalwart_board_watches (board, created_at)",
}
"""Indexes that change no answer, only what a query costs, by name: created with the
tables, and by a writer that finds them missing (no schema version, as for the workers
registry: a stalwart that predates an index keeps it up to date without knowing of
it). The approval events (``_approvals``), which the approvals listing reads alone;
the blackboards' watches by board (after :data:`OPERATIONAL` made their table)."""


async def _add_indexes(conn: Conn, schema: str) -> None:
    """Create the :data:`INDEXES` missing in ``schema``. Looked up first: ``CREATE INDEX
    IF NOT EXISTS`` locks the table against writes even when the index is there."""
    have = {r[0] for r in await (await conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,))).fetchall()}
    for name, stmt in INDEXES.items():
        if name not in have:
            await conn.execute(stmt)


async def _add_checksums(conn: Conn) -> None:
    """2 -> 3: add the checksum columns and hash every run and event as they are."""
    for stmt in (
            "ALTER TABLE stalwart_runs ADD COLUMN event_head TEXT NOT NULL DEFAULT '"
            + GENESIS + "'",
            "ALTER TABLE stalwart_runs ADD COLUMN run_digest TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE stalwart_runs ADD COLUMN outcome_digest TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE stalwart_events ADD COLUMN digest TEXT NOT NULL DEFAULT ''"):
        await conn.execute(stmt)
    runs = await (await conn.execute(
        "SELECT run_id, workflow, workflow_ref, input, parent_run_id, parent_step_id, "
        "created_at, result, error FROM stalwart_runs")).fetchall()
    for run_id, wf, ref, inp, parent, parent_step, created, result, error in runs:
        prev, digests = GENESIS, []
        for seq, kind, step_id, name, payload, at in await (await conn.execute(
                "SELECT seq, kind, step_id, name, payload, created_at FROM stalwart_events "
                "WHERE run_id = %s ORDER BY seq", (run_id,))).fetchall():
            prev = event_digest(prev, run_id, seq, kind, step_id, name, payload, at)
            digests.append((prev, run_id, seq))
        await conn.cursor().executemany(
            "UPDATE stalwart_events SET digest = %s WHERE run_id = %s AND seq = %s", digests)
        await conn.execute(
            "UPDATE stalwart_runs SET event_head = %s, run_digest = %s, outcome_digest = %s "
            "WHERE run_id = %s",
            (prev, run_digest(run_id, wf, ref, inp, parent, parent_step, created),
             outcome_digest(run_id, result, error), run_id))


Migration = tuple[str, ...] | Callable[[Conn], Awaitable[None]]

MIGRATIONS: dict[int, Migration] = {
    1: _LIMITS,
    2: _add_checksums,
    3: _BOARD,
    4: ("ALTER TABLE stalwart_events ADD COLUMN payload_ref TEXT",
        "CREATE TABLE stalwart_blobs (hash TEXT PRIMARY KEY, content TEXT NOT NULL)"),
}
"""What takes the schema from version ``n`` to ``n + 1``, keyed by ``n``: statements, or
a function that runs them (and computes what SQL cannot)."""

Access = Literal["write", "client", "read"]


async def check_or_create(conn: Conn, url: str, *, access: Access = "write",
                          create: bool = False) -> bool:
    """Check the journal in the connection's current schema; a store that writes
    creates (or migrates) it there first. Returns whether there is a journal (``False``
    only for a ``client`` that found none: its first write creates it).

    Raises:
        NotAStalwartStoreError: no journal here (to a reader), another application's
            tables where a writer was not told to ``create``, or tables named like ours
            that are not a journal.
        SchemaVersionError: a newer journal, or an older one a reader cannot migrate.
    """
    row = await (await conn.execute("SELECT current_schema()")).fetchone()
    schema = row[0] if row else None
    if schema is None:
        raise ConfigurationError(
            f"{url}: no schema of the search_path exists to hold the journal")
    where = f"{url} (schema {schema})"
    if access != "write":
        found = await _columns(conn, schema)
        if not found:
            if access == "client":
                return False
            raise NotAStalwartStoreError(
                f"there is no stalwart journal in {where}: nothing was created (a worker, "
                "or a run started there, creates one)")
        await _check(conn, where, found, writer=False)
        return True
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                           (f"stalwart-schema:{schema}",))
        found = await _columns(conn, schema)
        if not found:
            others = await _relations(conn, schema)
            if others and not create:
                shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
                raise NotAStalwartStoreError(
                    f"{where} holds {len(others)} other table(s) or view(s) ({shown}) and "
                    "no stalwart journal: nothing was created beside them (use an empty "
                    "database or schema, or create it there on purpose with `stalwart "
                    "worker --create` / PostgresStore(url, create=True))")
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    await conn.execute(stmt)
            await conn.execute(
                "INSERT INTO stalwart_meta (key, value) VALUES ('app', %s), "
                "('schema_version', %s)", (APP_ID, str(SCHEMA_VERSION)))
            for stmt in OPERATIONAL:
                await conn.execute(stmt)
            await _add_indexes(conn, schema)
            return True
        version = await _check(conn, where, found, writer=True)
        for v in range(version, SCHEMA_VERSION):
            step = MIGRATIONS[v]
            if callable(step):
                await step(conn)
            else:
                for stmt in step:
                    await conn.execute(stmt)
        if version != SCHEMA_VERSION:
            await conn.execute("UPDATE stalwart_meta SET value = %s "
                               "WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            log.info("%s: journal schema migrated from %d to %d", where, version,
                     SCHEMA_VERSION)
            found = await _columns(conn, schema)
        _check_columns(where, found)
        for stmt in OPERATIONAL:
            await conn.execute(stmt)
        await _add_indexes(conn, schema)
        return True


async def _check(conn: Conn, where: str, found: dict[str, set[str]], *,
                 writer: bool) -> int:
    """The version of the journal whose tables are ``found``, once it is ours and one
    this stalwart can use (a writer: or migrate)."""
    if "stalwart_meta" not in found or found["stalwart_meta"] != TABLES["stalwart_meta"]:
        raise NotAStalwartStoreError(
            f"{where} has tables named like stalwart's ({', '.join(sorted(found))}) "
            "but no stalwart_meta of a journal; they were left untouched")
    meta: dict[str, str] = dict(await (await conn.execute(
        "SELECT key, value FROM stalwart_meta")).fetchall())
    if meta.get("app") != APP_ID:
        raise NotAStalwartStoreError(
            f"{where}: stalwart_meta does not belong to a stalwart journal; "
            "it was left untouched")
    try:
        version = int(meta.get("schema_version", ""))
    except ValueError:
        raise NotAStalwartStoreError(
            f"{where}: unreadable schema version {meta.get('schema_version')!r}"
        ) from None
    migratable = all(v in MIGRATIONS for v in range(version, SCHEMA_VERSION))
    if version > SCHEMA_VERSION or not migratable or (version < SCHEMA_VERSION
                                                       and not writer):
        newer = ("a newer" if version > SCHEMA_VERSION
                 else "an older, unsupported" if not migratable else "an older")
        hint = ("; a stalwart that writes to it (a worker) migrates it first"
                if version < SCHEMA_VERSION and migratable else "")
        raise SchemaVersionError(
            f"{where} was written by {newer} stalwart (journal schema {version}, this "
            f"stalwart reads {SCHEMA_VERSION}); it was left untouched{hint}",
            found=version, expected=SCHEMA_VERSION)
    if version == SCHEMA_VERSION:
        _check_columns(where, found)
    return version


def _check_columns(where: str, found: dict[str, set[str]]) -> None:
    for table, columns in TABLES.items():
        if table != "stalwart_meta" and not columns <= found.get(table, set()):
            raise NotAStalwartStoreError(
                f"{where}: table {table} does not have the columns of a stalwart "
                "journal; it was left untouched")


async def _relations(conn: Conn, schema: str) -> list[str]:
    """Tables, views and sequences in ``schema`` (another application's, when no journal
    is there)."""
    rows = await (await conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') "
        "ORDER BY c.relname", (schema,))).fetchall()
    return [r[0] for r in rows]


async def _columns(conn: Conn, schema: str) -> dict[str, set[str]]:
    """The columns of the tables named like ours in ``schema``, by table."""
    found: dict[str, set[str]] = {}
    for table, column in await (await conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = ANY(%s)",
            (schema, list(TABLES)))).fetchall():
        found.setdefault(table, set()).add(column)
    return found

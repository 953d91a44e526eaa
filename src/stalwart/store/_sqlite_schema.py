"""The SQLite journal's file: what is ours, how it is created, checked and migrated.

A file is a stalwart journal when its header carries our ``application_id`` and its
``stalwart_meta`` table says so. Only two kinds of file are ever initialised, and only
by a store that writes: one that does not exist or is empty (0 bytes), and — for a
migration — one that is already ours. Anything else (another application's database,
an SQLite file holding nothing but a view or a ``user_version``) is refused with a typed
error, and it is inspected on a read-only connection so that not even a checkpoint of
its WAL touches it.

Every ``sqlite3`` error is translated here (:func:`store_error`): damage becomes
:class:`~stalwart.errors.StoreCorruptedError`, contention and I/O trouble a retryable
:class:`~stalwart.errors.StoreError`.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Literal

from ..errors import (
    NotAStalwartStoreError,
    SchemaVersionError,
    StoreCorruptedError,
    StoreError,
)
from ._approvals import approval_events_sql
from ._base import APP_ID, SCHEMA_VERSION
from ._chain import GENESIS, event_digest, outcome_digest, run_digest
from ._wal import check_wal

__all__ = [
    "APPLICATION_ID",
    "APPROVALS_INDEX",
    "SCHEMA",
    "FileState",
    "connect",
    "create",
    "ensure_operational",
    "file_state",
    "inspect",
    "migrate",
    "add_indexes",
    "integrity_check",
    "Verifier",
    "refuse_damaged_wal",
    "store_error",
]

APPLICATION_ID = 0x53574152  # "SWAR", in the SQLite header: identifies our files
_SQLITE_MAGIC = b"SQLite format 3\x00"

FileState = Literal["missing", "empty", "sqlite"]

_GENESIS_SQL = f"'{GENESIS}'"
SCHEMA = f"""
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
    event_count INTEGER NOT NULL DEFAULT 0,
    event_head TEXT NOT NULL DEFAULT {_GENESIS_SQL},
    run_digest TEXT NOT NULL DEFAULT '',
    outcome_digest TEXT NOT NULL DEFAULT ''
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
    digest TEXT NOT NULL DEFAULT '',
    payload_ref TEXT,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE blobs (hash TEXT PRIMARY KEY, content TEXT NOT NULL) WITHOUT ROWID;
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

# Operational state that no run depends on (the workers registry, the cluster-wide
# limits): part of every new journal, and created when missing by a writer that opens
# one of schema 1, which predates some of them.
OPERATIONAL = (
    "CREATE TABLE IF NOT EXISTS workers (worker_id TEXT PRIMARY KEY, host TEXT NOT NULL, "
    "pid INTEGER NOT NULL, started_at REAL NOT NULL, heartbeat_at REAL NOT NULL, "
    "concurrency INTEGER NOT NULL, in_flight INTEGER NOT NULL, lease_seconds REAL NOT NULL, "
    "pools TEXT NOT NULL, stopped_at REAL)",
    "CREATE TABLE IF NOT EXISTS rate_buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL, "
    "updated_at REAL NOT NULL, capacity REAL NOT NULL, refill_per_second REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bulkhead_slots (pool TEXT NOT NULL, holder TEXT NOT NULL, "
    "acquired_at REAL NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (pool, holder))",
    "CREATE INDEX IF NOT EXISTS bulkhead_slots_holder ON bulkhead_slots (holder)",
    "CREATE TABLE IF NOT EXISTS board_watches (run_id TEXT NOT NULL, signal TEXT NOT NULL, "
    "board TEXT NOT NULL, pattern TEXT NOT NULL, created_at REAL NOT NULL, "
    "PRIMARY KEY (run_id, signal)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS board_watches_board ON board_watches (board, created_at)",
)
_LAST_OPERATIONAL = "board_watches"
"""The operational table added last: a journal of the current schema that lacks it
was written by a stalwart that predates it, and a writer adds it (:func:`ensure_operational`)."""

APPROVALS_INDEX = "events_approvals"
INDEXES = {
    APPROVALS_INDEX: f"CREATE INDEX IF NOT EXISTS {APPROVALS_INDEX} ON events (run_id, seq) "
                     f"WHERE {approval_events_sql()}",
}
"""Indexes that change no answer, only what a query costs: part of every new journal,
and created by every writer that opens one without them (no schema version: a
stalwart that predates an index keeps it up to date without knowing of it). The
approval events (``_approvals``), which the approvals listing reads alone. By name."""

BOARD = (
    "CREATE TABLE board_entries (board TEXT NOT NULL, key TEXT NOT NULL, "
    "version INTEGER NOT NULL, value TEXT NOT NULL, state TEXT NOT NULL, verified_by TEXT, "
    "note TEXT, provenance TEXT NOT NULL, sources TEXT NOT NULL, created_at REAL NOT NULL, "
    "updated_at REAL NOT NULL, taken_by TEXT, taken_at REAL, PRIMARY KEY (board, key)) "
    "WITHOUT ROWID",
    "CREATE TABLE board_ops (op_key TEXT PRIMARY KEY, board TEXT NOT NULL, entry TEXT, "
    "created_at REAL NOT NULL)",
)
"""Schema 3: the blackboards (``_board``): entries, and the operations applied (by the
idempotency key of the step that made each)."""

BLOBS = (
    "ALTER TABLE events ADD COLUMN payload_ref TEXT",
    "CREATE TABLE blobs (hash TEXT PRIMARY KEY, content TEXT NOT NULL) WITHOUT ROWID",
)
"""Schema 4: large payloads stored once, by content (``_blobs``). Events written before
keep their payloads inline."""

MIGRATABLE_FROM = 1
"""The oldest journal schema a writer migrates (1: before checksums, see _chain)."""

ERRORS = (sqlite3.Error, UnicodeDecodeError)
"""What the ``sqlite3`` module raises on a damaged file: its own errors, and a
UnicodeDecodeError where SQLite's message quotes damaged text (a flipped byte in the
schema's SQL) that is not UTF-8."""

# SQLite's primary result codes (the low byte of an extended code).
_DAMAGE = {1, 11, 17, 20, 24, 25, 26}  # ERROR, CORRUPT, SCHEMA, MISMATCH, FORMAT, RANGE, NOTADB
_NOT_RETRYABLE = {3, 8, 14, 23}  # PERM, READONLY, CANTOPEN (no folder, no rights), AUTH


def store_error(exc: sqlite3.Error | UnicodeDecodeError, path: str, what: str
                ) -> StoreError:
    """A typed error for an ``sqlite3`` error met while doing ``what`` with ``path``.

    Damage (a malformed page, a record that does not decode, a schema that lost a
    table or column) is :class:`StoreCorruptedError`; a busy or locked file, I/O trouble
    or a full disk a retryable :class:`StoreError`; anything else a plain one.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    text = f"{what} {path}: {exc}"
    err: StoreError
    if primary in _DAMAGE or isinstance(exc, UnicodeDecodeError) or (
            primary is None and "decode" in str(exc)):
        err = StoreCorruptedError(f"{path} cannot be read as a journal: it is damaged "
                                  f"({exc}); nothing was changed (stalwart doctor says more)")
    elif primary in _NOT_RETRYABLE or isinstance(exc, sqlite3.ProgrammingError):
        err = StoreError(text)
    else:
        err = StoreError(text, retryable=True)
    err.__cause__ = exc
    return err


def file_state(path: str) -> FileState:
    """What is at ``path``: nothing, an empty file, or an SQLite file.

    Raises:
        NotAStalwartStoreError: a directory, or a file that is not SQLite.
    """
    p = Path(path)
    if p.is_dir():
        raise NotAStalwartStoreError(f"{path} is a directory, not a stalwart journal")
    if not p.exists():
        # A -wal with frames beside a missing or empty file still holds a database.
        return "missing" if _wal_size(path) == 0 else "sqlite"
    if p.stat().st_size == 0:
        return "empty" if _wal_size(path) == 0 else "sqlite"
    with p.open("rb") as fh:
        if fh.read(16) != _SQLITE_MAGIC:
            raise NotAStalwartStoreError(
                f"{path} is not a stalwart journal (not an SQLite file); it was left "
                "untouched")
    return "sqlite"


def _wal_size(path: str) -> int:
    try:
        return Path(path + "-wal").stat().st_size
    except OSError:
        return 0


def refuse_damaged_wal(path: str) -> None:
    """Raise :class:`StoreCorruptedError` if SQLite would silently drop committed
    transactions of ``path``'s WAL (see :mod:`._wal`). Call before connecting."""
    report = check_wal(path)
    if report.damaged:
        # A writer appending while we read can make a frame look torn: a real break is
        # still there when read again.
        report = check_wal(path)
    if report.damaged:
        raise StoreCorruptedError(
            f"{path}: {report.damage[0]}; the journal was not opened, so nothing was "
            "changed (stalwart doctor says more; keep a copy of the files before "
            "anything else opens them)")


def connect(path: str, *, read_only: bool, busy_timeout: float) -> sqlite3.Connection:
    """A connection to ``path``; read-only ones use ``mode=ro`` and can never write
    (nor checkpoint the WAL into the file)."""
    target = f"{Path(path).absolute().as_uri()}?mode=ro" if read_only else path
    try:
        conn = sqlite3.connect(target, uri=read_only, isolation_level=None,
                               check_same_thread=False, timeout=busy_timeout)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    except ERRORS as exc:
        raise store_error(exc, path, "cannot open") from exc
    return conn


def inspect(conn: sqlite3.Connection, path: str) -> int:
    """Check that ``conn``'s database is a sound stalwart journal; its schema version.

    Raises:
        NotAStalwartStoreError: the file is another application's SQLite database.
        StoreCorruptedError: it is ours but damaged.
    """
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        objects = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    except ERRORS as exc:
        raise store_error(exc, path, "cannot read") from exc
    if app_id != APPLICATION_ID:
        what = (f"its schema holds {len(objects)} object(s)" if objects
                else "an SQLite file stalwart did not create")
        raise NotAStalwartStoreError(
            f"{path} is an SQLite database but not a stalwart journal ({what}); it was "
            "left untouched")
    try:
        meta = dict(conn.execute("SELECT key, value FROM stalwart_meta").fetchall())
    except ERRORS as exc:
        raise store_error(exc, path, "cannot read") from exc
    if meta.get("app") != APP_ID:
        raise NotAStalwartStoreError(f"{path} is not a stalwart journal")
    try:
        return int(meta.get("schema_version", "0"))
    except ValueError:
        raise StoreCorruptedError(f"{path} has an unreadable schema version") from None


def integrity_check(path: str, *, busy_timeout: float, limit: int = 20) -> list[str]:
    """SQLite's ``integrity_check`` of ``path`` (``quick_check`` and every index against
    its table) on a read-only connection: ``[]`` when the file's structure is sound, else
    up to ``limit`` problems."""
    conn = connect(path, read_only=True, busy_timeout=busy_timeout)
    try:
        rows = [r[0] for r in conn.execute(f"PRAGMA integrity_check({int(limit)})")]
    except ERRORS as exc:
        return [str(exc)]
    finally:
        conn.close()
    return [] if rows == ["ok"] else [str(r) for r in rows]


class Verifier:
    """``integrity_check`` of a journal in the background, for a store that writes.

    Why not at every open: it reads the whole file (~0.4 s of CPU for 100,000 runs),
    and every CLI command opens the journal. What an open needs is cheaper: the header,
    the schema and the WAL are checked there, every record against its digest when it is
    read, and the store's lookups by run id against a second structure (see
    ``SQLiteStore._find``). What remains — an index that silently *omits* a run from a
    scan (a claim, a list) — is what this check finds, once, soon after a writer opens
    (workers live long); ``stalwart doctor`` runs the same check on demand. It reads a
    snapshot on a read-only connection of its own, so it never holds up the writer, and
    :meth:`stop` interrupts it.
    """

    def __init__(self, path: str, *, busy_timeout: float) -> None:
        self._path = path
        self._conn = connect(path, read_only=True, busy_timeout=busy_timeout)
        self.damage: StoreCorruptedError | None = None
        """What the check found (``None``: nothing, or not finished)."""
        self.done = threading.Event()
        self._closing = threading.Lock()  # interrupt() on a closed connection raises
        self._thread = threading.Thread(target=self._run, name="stalwart-sqlite-check",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            rows = [r[0] for r in self._conn.execute("PRAGMA integrity_check(5)")]
            if rows != ["ok"]:
                self.damage = StoreCorruptedError(
                    f"{self._path} is damaged ({'; '.join(map(str, rows))}); the store "
                    "stopped writing (stalwart doctor says more; keep a copy of the files "
                    "before anything else opens them)")
        except sqlite3.OperationalError:
            pass  # interrupted by stop(), or the file is busy: no finding
        except ERRORS as exc:
            self.damage = StoreCorruptedError(f"{self._path} is damaged ({exc})")
        finally:
            with self._closing:
                self._conn.close()
                self.done.set()

    def stop(self) -> None:
        """Interrupt the check if it still runs, and wait for its thread."""
        with self._closing:
            if not self.done.is_set():
                self._conn.interrupt()
        self._thread.join()


def version_error(path: str, found: int, *, writer: bool) -> SchemaVersionError:
    if found > SCHEMA_VERSION:
        how = "a newer"
        hint = "it was left untouched"
    elif found >= MIGRATABLE_FROM and not writer:
        how = "an older"
        hint = ("it was left untouched: a stalwart that writes to it (a worker, `stalwart "
                "resume`) migrates it first")
    else:
        how = "an older, unsupported"
        hint = "it was left untouched"
    return SchemaVersionError(
        f"{path} was written by {how} stalwart (journal schema {found}, this stalwart "
        f"reads {SCHEMA_VERSION}); {hint}", found=found, expected=SCHEMA_VERSION)


def create(conn: sqlite3.Connection) -> None:
    """Write the schema into ``conn``'s empty database, in one transaction: a crash
    leaves the file empty again, never half a journal of unknown origin."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            for stmt in (*OPERATIONAL, *BOARD, *INDEXES.values()):
                conn.execute(stmt)
            conn.executemany("INSERT INTO stalwart_meta (key, value) VALUES (?, ?)",
                             [("app", APP_ID), ("schema_version", str(SCHEMA_VERSION))])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def add_indexes(conn: sqlite3.Connection) -> None:
    """Create the :data:`INDEXES` a writer's journal lacks (one written before them),
    in one transaction; nothing is written when they are all there."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    missing = [stmt for name, stmt in INDEXES.items() if name not in have]
    if not missing:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in missing:
            conn.execute(stmt)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring ``conn``'s journal (ours, checked) to :data:`SCHEMA_VERSION` in one
    transaction. Schema 1 predates checksums: its events are hashed as they are now;
    schemas 1 and 2 predate the blackboards: their tables are added; schemas 1 to 3
    predate blobs: the column and the table are added (old payloads stay inline)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        meta = dict(conn.execute("SELECT key, value FROM stalwart_meta").fetchall())
        found = int(meta.get("schema_version", "0"))
        if found == 1:
            _migrate_1(conn)
        if found in (1, 2):
            for stmt in BOARD:
                conn.execute(stmt)
        if found in (1, 2, 3):
            for stmt in BLOBS:
                conn.execute(stmt)
        elif found != SCHEMA_VERSION:
            raise version_error(path, found, writer=True)
        for stmt in OPERATIONAL:
            conn.execute(stmt)
        conn.execute("UPDATE stalwart_meta SET value = ? WHERE key = 'schema_version'",
                     (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def ensure_operational(conn: sqlite3.Connection) -> None:
    """Add the operational tables a journal of the current schema lacks (it was
    written by a stalwart that predates some); one look when it has them all."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                    (_LAST_OPERATIONAL,)).fetchone() is not None:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in OPERATIONAL:
            conn.execute(stmt)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _migrate_1(conn: sqlite3.Connection) -> None:
    for stmt in (f"ALTER TABLE runs ADD COLUMN event_head TEXT NOT NULL DEFAULT {_GENESIS_SQL}",
                 "ALTER TABLE runs ADD COLUMN run_digest TEXT NOT NULL DEFAULT ''",
                 "ALTER TABLE runs ADD COLUMN outcome_digest TEXT NOT NULL DEFAULT ''",
                 "ALTER TABLE events ADD COLUMN digest TEXT NOT NULL DEFAULT ''"):
        conn.execute(stmt)
    runs = conn.execute(
        "SELECT run_id, workflow, workflow_ref, input, parent_run_id, parent_step_id, "
        "created_at, result, error FROM runs").fetchall()
    for run_id, wf, ref, inp, parent, parent_step, created, result, error in runs:
        prev, digests = GENESIS, []
        for seq, kind, step_id, name, payload, at in conn.execute(
                "SELECT seq, kind, step_id, name, payload, created_at FROM events "
                "WHERE run_id = ? ORDER BY seq", (run_id,)):
            prev = event_digest(prev, run_id, seq, kind, step_id, name, payload, at)
            digests.append((prev, run_id, seq))
        conn.executemany("UPDATE events SET digest = ? WHERE run_id = ? AND seq = ?",
                         digests)
        conn.execute(
            "UPDATE runs SET event_head = ?, run_digest = ?, outcome_digest = ? "
            "WHERE run_id = ?",
            (prev, run_digest(run_id, wf, ref, inp, parent, parent_step,
                                            created),
             outcome_digest(run_id, result, error), run_id))

"""SQLiteStore's operational tables: the workers registry, the cluster-wide limits
(rate buckets, bulkhead slots), the blackboards and the approvals query.

Each is a function that takes the store's connection and does the SQL and the row
handling; the store's methods run them on its thread (a write inside the group commit's
``BEGIN IMMEDIATE``, so it holds the file's write lock against every other process from
read to write; a read as it is), so nothing here opens, commits or maps errors. The
rules they carry out live where all stores share them (``_limits``, ``_board``,
``_approvals``); these are kept apart from ``_sqlite`` because none of them touches a
run's lease, its journal or the group commit, which is what that module is about.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from . import _sqlite_schema as schema
from ._approvals import ApprovalRow, select_events_sql, select_queued_sql
from ._approvals import approval_journals as plan_approval_journals
from ._base import ApprovalJournal, WorkerRecord
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
from ._limits import (
    BucketDraw,
    BucketState,
    LimitsView,
    Reservation,
    limits_view,
    plan_adjustment,
    plan_reservation,
)
from ._runs import plan_wake
from ._sqlite_rows import read_state, write_plan

__all__ = [
    "approval_journals", "board_apply", "board_entries", "board_names", "board_unwatch",
    "board_wake", "board_watch", "board_watches", "bulkhead_acquire", "bulkhead_active",
    "bulkhead_release", "bulkhead_renew", "forget_workers", "limits", "list_workers",
    "rate_adjust", "rate_reserve", "save_worker",
]

Conn = sqlite3.Connection

_WORKER_COLUMNS = ("worker_id, host, pid, started_at, heartbeat_at, concurrency, in_flight, "
                   "lease_seconds, pools, stopped_at")
_BOARD_COLUMNS = ", ".join(ROW_COLUMNS)
_CHUNK = 500
"""Run ids per statement where a query takes a list of them (SQLite before 3.32 allows
999 parameters)."""


# -- the workers registry ----------------------------------------------------------------

def save_worker(conn: Conn, worker: WorkerRecord) -> None:
    conn.execute(
        f"INSERT OR REPLACE INTO workers ({_WORKER_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (worker.worker_id, worker.host, worker.pid, worker.started_at,
         worker.heartbeat_at, worker.concurrency, worker.in_flight,
         worker.lease_seconds, json.dumps(list(worker.pools)), worker.stopped_at))


def list_workers(conn: Conn, *, since: float) -> list[WorkerRecord]:
    rows = conn.execute(
        f"SELECT {_WORKER_COLUMNS} FROM workers WHERE heartbeat_at >= ? "
        "ORDER BY started_at, worker_id", (since,)).fetchall()
    return [_worker_record(r) for r in rows]


def forget_workers(conn: Conn, *, before: float) -> int:
    return conn.execute("DELETE FROM workers WHERE heartbeat_at < ?", (before,)).rowcount


def _worker_record(row: Sequence[Any]) -> WorkerRecord:
    return WorkerRecord(
        worker_id=row[0], host=row[1], pid=row[2], started_at=row[3], heartbeat_at=row[4],
        concurrency=row[5], in_flight=row[6], lease_seconds=row[7],
        pools=tuple(json.loads(row[8])), stopped_at=row[9])


# -- cluster-wide limits (processes sharing this file share them) ------------------------

def _buckets(conn: Conn, draws: Sequence[BucketDraw]) -> list[BucketState | None]:
    out: list[BucketState | None] = []
    for draw in draws:
        row = conn.execute("SELECT tokens, updated_at FROM rate_buckets WHERE key = ?",
                           (draw.key,)).fetchone()
        out.append(None if row is None else BucketState(row[0], row[1]))
    return out


def _save_buckets(conn: Conn, draws: Sequence[BucketDraw],
                  states: Sequence[BucketState]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO rate_buckets (key, tokens, updated_at, capacity, "
        "refill_per_second) VALUES (?, ?, ?, ?, ?)",
        [(d.key, s.tokens, s.updated_at, d.capacity, d.refill_per_second)
         for d, s in zip(draws, states, strict=True)])


def rate_reserve(conn: Conn, draws: Sequence[BucketDraw], *, now: float,
                 max_wait: float | None) -> Reservation:
    reservation, states = plan_reservation(_buckets(conn, draws), draws,
                                           now=now, max_wait=max_wait)
    _save_buckets(conn, draws, states)
    return reservation


def rate_adjust(conn: Conn, draws: Sequence[BucketDraw], *, now: float) -> tuple[float, ...]:
    states = [plan_adjustment(_buckets(conn, [d])[0], d, now=now) for d in draws]
    _save_buckets(conn, draws, states)
    return tuple(s.tokens for s in states)


def bulkhead_acquire(conn: Conn, pool: str, holder: str, *, max_concurrent: int,
                     now: float, lease_seconds: float) -> bool:
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


def bulkhead_renew(conn: Conn, holders: Sequence[str], *, now: float,
                   lease_seconds: float) -> set[str]:
    kept = set()
    for holder in holders:
        if conn.execute("UPDATE bulkhead_slots SET expires_at = ? WHERE holder = ?",
                        (now + lease_seconds, holder)).rowcount:
            kept.add(holder)
    return kept


def bulkhead_release(conn: Conn, pool: str, holder: str) -> None:
    conn.execute("DELETE FROM bulkhead_slots WHERE pool = ? AND holder = ?", (pool, holder))


def limits(conn: Conn, *, now: float) -> LimitsView:
    have = {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN "
        "('rate_buckets', 'bulkhead_slots')")}
    buckets = conn.execute(
        "SELECT key, tokens, updated_at, capacity, refill_per_second "
        "FROM rate_buckets").fetchall() if "rate_buckets" in have else []
    slots = conn.execute(
        "SELECT pool, holder, acquired_at, expires_at FROM bulkhead_slots"
    ).fetchall() if "bulkhead_slots" in have else []
    return limits_view(buckets, slots, now=now)


def bulkhead_active(conn: Conn, pool: str, *, now: float) -> int:
    row = conn.execute("SELECT count(*) FROM bulkhead_slots "
                       "WHERE pool = ? AND expires_at >= ?", (pool, now)).fetchone()
    return int(row[0])


# -- blackboards (see _board: lock, plan, write, one write lock across processes) --------

def board_apply(conn: Conn, op: BoardOp, *, now: float) -> BoardEntry | None:
    done = conn.execute("SELECT entry FROM board_ops WHERE op_key = ?",
                        (op.op_key,)).fetchone()
    if done is not None:
        return BoardEntry.from_json(json.loads(done[0]))
    if op.kind == "take":
        assert op.pattern is not None
        current = choose(op.pattern, board_entries(
            conn, op.board, prefix=op.pattern.prefix, extra="AND taken_by IS NULL"))
    else:
        found = board_entries(conn, op.board, prefix=op.key, extra="AND key = ?",
                              args=(op.key,))
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


def board_entries(conn: Conn, board: str, *, prefix: str, extra: str = "",
                  args: Sequence[Any] = ()) -> list[BoardEntry]:
    rows = conn.execute(
        f"SELECT {_BOARD_COLUMNS} FROM board_entries WHERE board = ? AND "
        f"substr(key, 1, ?) = ? {extra} ORDER BY key",
        (board, len(prefix), prefix, *args)).fetchall()
    return [entry_from_row(r) for r in rows]


def board_names(conn: Conn) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT board FROM board_entries ORDER BY board")]


def board_watches(conn: Conn, board: str) -> list[BoardWatch]:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                    "name = 'board_watches'").fetchone() is None:
        return []  # a journal no writer of this stalwart has opened yet
    return [watch_from_row(r) for r in conn.execute(
        f"SELECT {', '.join(WATCH_COLUMNS)} FROM board_watches WHERE board = ? "
        "ORDER BY created_at, run_id, signal", (board,))]


def board_watch(conn: Conn, watch: BoardWatch) -> None:
    conn.execute(f"INSERT OR IGNORE INTO board_watches ({', '.join(WATCH_COLUMNS)}) "
                 "VALUES (?, ?, ?, ?, ?)", watch_row(watch))


def board_unwatch(conn: Conn, run_id: str, signal: str) -> None:
    conn.execute("DELETE FROM board_watches WHERE run_id = ? AND signal = ?",
                 (run_id, signal))


def board_wake(conn: Conn, entry: BoardEntry, *, now: float) -> list[str]:
    woken: list[str] = []
    for w in watching([watch_from_row(r) for r in conn.execute(
            f"SELECT {', '.join(WATCH_COLUMNS)} FROM board_watches WHERE board = ?",
            (entry.board,))], entry):
        state = read_state(conn, w.run_id)
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
            write_plan(conn, plan_wake(state, now=now), now)
            woken.append(w.run_id)
    return woken


# -- the approvals query -----------------------------------------------------------------

def approval_journals(conn: Conn, run_ids: Sequence[str]) -> list[ApprovalJournal]:
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
    return plan_approval_journals(run_ids, rows, queued)

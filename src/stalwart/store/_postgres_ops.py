"""PostgresStore's operational tables: the workers registry, the cluster-wide limits
(rate buckets, bulkhead slots), the blackboards and the approvals query.

Each is a function that takes a connection and does the SQL and the row handling; the
store's methods call them inside its own plumbing (``_write``: a transaction, retried
after a deadlock, notifications sent once it commits; ``_query``: a read), so nothing
here opens a connection, retries or maps errors. The rules they carry out live where
all stores share them (``_limits``, ``_board``, ``_approvals``); these are kept apart
from ``_postgres`` because none of them touches a run's lease, its journal or the
group commit, which is what that module is about.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from ._approvals import approval_journals as plan_approval_journals
from ._approvals import select_events_sql, select_queued_sql
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
from ._postgres_rows import lock_state
from ._runs import Plan, plan_wake

__all__ = [
    "approval_journals", "board_apply", "board_entries", "board_names", "board_unwatch",
    "board_wake", "board_watch", "board_watches", "bulkhead_acquire", "bulkhead_active",
    "bulkhead_release", "bulkhead_renew", "forget_workers", "limits", "list_workers",
    "rate_adjust", "rate_reserve", "save_worker",
]

Conn = AsyncConnection[TupleRow]
WritePlan = Callable[[Conn, Plan, float], Awaitable[None]]
"""The store's ``_write_plan``: write a plan, notify, wake the run it names."""

_WORKER_COLUMNS = ("worker_id, host, pid, started_at, heartbeat_at, concurrency, in_flight, "
                   "lease_seconds, pools, stopped_at")
_BOARD_COLUMNS = ", ".join(ROW_COLUMNS)


async def _rows(conn: Conn, sql: str, args: Sequence[Any] = ()) -> list[TupleRow]:
    return await (await conn.execute(sql, args)).fetchall()


# -- the workers registry ----------------------------------------------------------------

async def save_worker(conn: Conn, worker: WorkerRecord) -> None:
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


async def list_workers(conn: Conn, *, since: float) -> list[WorkerRecord]:
    rows = await _rows(
        conn, f"SELECT {_WORKER_COLUMNS} FROM stalwart_workers WHERE heartbeat_at >= %s "
        "ORDER BY started_at, worker_id", (since,))
    return [WorkerRecord(
        worker_id=r[0], host=r[1], pid=r[2], started_at=r[3], heartbeat_at=r[4],
        concurrency=r[5], in_flight=r[6], lease_seconds=r[7], pools=tuple(r[8]),
        stopped_at=r[9]) for r in rows]


async def forget_workers(conn: Conn, *, before: float) -> int:
    cur = await conn.execute("DELETE FROM stalwart_workers WHERE heartbeat_at < %s",
                             (before,))
    return cur.rowcount


# -- cluster-wide limits -----------------------------------------------------------------
# A bucket's row is locked (FOR UPDATE, in key order so two reservations never
# deadlock) from read to write. Acquiring a bulkhead slot takes a transaction-level
# advisory lock on the pool, so concurrent acquirers count the slots one at a time.

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


async def _save_buckets(conn: Conn, draws: Sequence[BucketDraw],
                        states: Sequence[BucketState]) -> None:
    await conn.cursor().executemany(
        "UPDATE stalwart_rate_buckets SET tokens = %s, updated_at = %s, capacity = %s, "
        "refill_per_second = %s WHERE key = %s",
        [(st.tokens, st.updated_at, d.capacity, d.refill_per_second, d.key)
         for d, st in zip(draws, states, strict=True)])


async def rate_reserve(conn: Conn, draws: Sequence[BucketDraw], *, now: float,
                       max_wait: float | None) -> Reservation:
    states = await _lock_buckets(conn, draws, now)
    reservation, after = plan_reservation(states, draws, now=now, max_wait=max_wait)
    await _save_buckets(conn, draws, after)
    return reservation


async def rate_adjust(conn: Conn, draws: Sequence[BucketDraw], *, now: float
                      ) -> tuple[float, ...]:
    states = await _lock_buckets(conn, draws, now)
    after = [plan_adjustment(st, d, now=now) for st, d in zip(states, draws, strict=True)]
    await _save_buckets(conn, draws, after)
    return tuple(st.tokens for st in after)


async def bulkhead_acquire(conn: Conn, pool: str, holder: str, *, max_concurrent: int,
                           now: float, lease_seconds: float) -> bool:
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


async def bulkhead_renew(conn: Conn, holders: Sequence[str], *, now: float,
                         lease_seconds: float) -> set[str]:
    rows = await (await conn.execute(
        "UPDATE stalwart_bulkhead_slots SET expires_at = %s WHERE holder = ANY(%s) "
        "RETURNING holder", (now + lease_seconds, list(holders)))).fetchall()
    return {r[0] for r in rows}


async def bulkhead_release(conn: Conn, pool: str, holder: str) -> None:
    await conn.execute("DELETE FROM stalwart_bulkhead_slots WHERE pool = %s "
                       "AND holder = %s", (pool, holder))


async def limits(conn: Conn, *, now: float) -> LimitsView:
    buckets = await _rows(conn, "SELECT key, tokens, updated_at, capacity, "
                                "refill_per_second FROM stalwart_rate_buckets")
    slots = await _rows(conn, "SELECT pool, holder, acquired_at, expires_at "
                              "FROM stalwart_bulkhead_slots")
    return limits_view(buckets, slots, now=now)


async def bulkhead_active(conn: Conn, pool: str, *, now: float) -> int:
    rows = await _rows(conn, "SELECT count(*) FROM stalwart_bulkhead_slots "
                             "WHERE pool = %s AND expires_at >= %s", (pool, now))
    return int(rows[0][0])


# -- blackboards (see _board: lock, plan, write) -----------------------------------------

async def board_apply(conn: Conn, op: BoardOp, *, now: float) -> BoardEntry | None:
    done = await (await conn.execute(
        "SELECT entry FROM stalwart_board_ops WHERE op_key = %s",
        (op.op_key,))).fetchone()
    if done is not None:
        return BoardEntry.from_json(json.loads(done[0]))
    if op.kind == "take":
        # Exactly one taker: each candidate row is locked by one transaction;
        # the others skip it and look at the next.
        assert op.pattern is not None
        current = choose(op.pattern, await _board_rows(
            conn, op.board, op.pattern.prefix,
            "AND taken_by IS NULL ORDER BY updated_at, key FOR UPDATE SKIP LOCKED"))
    else:
        # One writer per key at a time, also while the key does not exist yet (a
        # row lock cannot hold a row that is not there).
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('stalwart-board'), "
            "hashtext(current_schema() || ':' || %s || ':' || %s))",
            (op.board, op.key))
        found = await _board_rows(conn, op.board, op.key, "AND key = %s FOR UPDATE",
                                  op.key)
        current = found[0] if found else None
    entry = plan_board(op, current, now)
    if entry is None:
        return None
    await conn.execute(
        f"INSERT INTO stalwart_board_entries ({_BOARD_COLUMNS}) VALUES "
        f"({', '.join(['%s'] * len(ROW_COLUMNS))}) ON CONFLICT (board, key) DO "
        f"UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in ROW_COLUMNS[2:])}",
        entry_row(entry))
    await conn.execute(
        "INSERT INTO stalwart_board_ops (op_key, board, entry, created_at) "
        "VALUES (%s, %s, %s, %s)",
        (op.op_key, op.board, json.dumps(entry.as_json()), now))
    return entry


async def board_entries(conn: Conn, board: str, *, prefix: str) -> list[BoardEntry]:
    rows = await _rows(
        conn, f"SELECT {_BOARD_COLUMNS} FROM stalwart_board_entries WHERE board = %s AND "
        "substr(key, 1, %s) = %s ORDER BY key", (board, len(prefix), prefix))
    return [entry_from_row(r) for r in rows]


async def board_names(conn: Conn) -> list[str]:
    rows = await _rows(conn, "SELECT DISTINCT board FROM stalwart_board_entries "
                             "ORDER BY board")
    return [r[0] for r in rows]


async def board_watches(conn: Conn, board: str) -> list[BoardWatch]:
    rows = await _rows(conn, "SELECT to_regclass('stalwart_board_watches') IS NOT NULL")
    if not rows[0][0]:
        return []  # a journal no writer of this stalwart has opened yet
    return [watch_from_row(r) for r in await _rows(
        conn, f"SELECT {', '.join(WATCH_COLUMNS)} FROM stalwart_board_watches "
        "WHERE board = %s ORDER BY created_at, run_id, signal", (board,))]


async def board_watch(conn: Conn, watch: BoardWatch) -> None:
    await conn.execute(
        f"INSERT INTO stalwart_board_watches ({', '.join(WATCH_COLUMNS)}) VALUES "
        "(%s, %s, %s, %s, %s) ON CONFLICT (run_id, signal) DO NOTHING",
        watch_row(watch))


async def board_unwatch(conn: Conn, run_id: str, signal: str) -> None:
    await conn.execute("DELETE FROM stalwart_board_watches WHERE run_id = %s AND "
                       "signal = %s", (run_id, signal))


async def board_wake(conn: Conn, entry: BoardEntry, *, now: float,
                     write_plan: WritePlan) -> list[str]:
    rows = await (await conn.execute(
        f"SELECT {', '.join(WATCH_COLUMNS)} FROM stalwart_board_watches "
        "WHERE board = %s", (entry.board,))).fetchall()
    found = watching([watch_from_row(r) for r in rows], entry)
    # Each run's row locked once, in one order for every writer: no deadlock
    # between two writes waking the same runs.
    states = {rid: await lock_state(conn, rid)
              for rid in sorted({w.run_id for w in found})}
    woken: list[str] = []
    for w in found:
        pending = await (await conn.execute(
            "SELECT 1 FROM stalwart_signals WHERE run_id = %s AND name = %s AND "
            "consumed_step_id IS NULL LIMIT 1", (w.run_id, w.signal))).fetchone()
        state = states[w.run_id]
        action = wake_action(state, pending is not None)
        if action == "forget":
            await conn.execute("DELETE FROM stalwart_board_watches WHERE run_id = %s "
                               "AND signal = %s", (w.run_id, w.signal))
        elif action == "signal":
            assert state is not None
            await conn.execute(
                "INSERT INTO stalwart_signals (run_id, name, payload, created_at) "
                "VALUES (%s, %s, %s, %s)", (w.run_id, w.signal, wake_payload(entry), now))
            plan = plan_wake(state, now=now)
            await write_plan(conn, plan, now)
            states[w.run_id] = plan.after
            woken.append(w.run_id)
    return woken


async def _board_rows(conn: Conn, board: str, prefix: str, extra: str,
                      *args: Any) -> list[BoardEntry]:
    rows = await (await conn.execute(
        f"SELECT {_BOARD_COLUMNS} FROM stalwart_board_entries WHERE board = %s AND "
        f"substr(key, 1, %s) = %s {extra}", (board, len(prefix), prefix, *args))).fetchall()
    return [entry_from_row(r) for r in rows]


# -- the approvals query -----------------------------------------------------------------

async def approval_journals(conn: Conn, run_ids: Sequence[str]) -> list[ApprovalJournal]:
    ids = list(dict.fromkeys(run_ids))
    queued = await _rows(conn, select_queued_sql(
        signals="stalwart_signals", run_ids="= ANY(%s)"), (ids,))
    rows = await _rows(conn, select_events_sql(
        events="stalwart_events", blobs="stalwart_blobs", run_ids="= ANY(%s)"), (ids,))
    return plan_approval_journals(ids, rows, queued)

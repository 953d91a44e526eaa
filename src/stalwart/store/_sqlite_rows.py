"""Reading and writing SQLite's run rows for the plans of ``_runs``: no rule here.

The SQLite counterpart of ``_postgres_rows``: :func:`find` and :func:`state` read a
run's row, checked against a second structure so that a damaged index is an error and
never another run's row; :func:`write_plan` writes what a plan says (its events, large
payloads as blobs, the row's changed columns) and wakes the run it names;
:func:`ready_query` selects the runs a claim may take, in claim order. Every function
runs on the store's thread, inside the transaction the caller holds (the group commit's
``BEGIN IMMEDIATE``). Kept apart from ``_sqlite`` so that the store's other parts (the
operational tables of ``_sqlite_ops``) write plans the one way the runs do.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from typing import Any

from ..errors import StoreCorruptedError
from ._blobs import split
from ._runs import (
    READY_ORDER_SQL,
    STATE_COLUMNS,
    EventRow,
    Plan,
    RunState,
    plan_wake,
    ready_sql,
    state_from_row,
)

__all__ = ["find", "index_damage", "insert_events", "read_state", "ready_query", "write_plan"]

_INSERT_EVENT = ("INSERT INTO events (run_id, seq, kind, step_id, name, payload, created_at, "
                 "digest, payload_ref) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def insert_events(conn: sqlite3.Connection, events: Sequence[EventRow]) -> None:
    """Insert ``events`` in the caller's transaction, large payloads as blobs (``_blobs``)."""
    rows, blobs = split(events)
    if blobs:
        conn.executemany("INSERT INTO blobs (hash, content) VALUES (?, ?) "
                         "ON CONFLICT (hash) DO NOTHING", blobs)
    conn.executemany(_INSERT_EVENT, rows)


def find(conn: sqlite3.Connection, columns: str, run_id: str) -> Any:
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
            raise index_damage(run_id)
        return row
    if conn.execute("SELECT 1 FROM events WHERE run_id = ? AND seq = 1",
                    (run_id,)).fetchone() is not None:
        raise index_damage(run_id)
    return None


def read_state(conn: sqlite3.Connection, run_id: str) -> RunState | None:
    row = find(conn, STATE_COLUMNS, run_id)
    return state_from_row(row) if row else None


def write_plan(conn: sqlite3.Connection, plan: Plan, now: float) -> None:
    """Write what ``plan`` says (its run's row is the one this transaction read), and
    wake the run it names."""
    if plan.events:
        insert_events(conn, plan.events)
    changes = plan.changes()
    if changes:
        conn.execute(_update_sql(tuple(changes)), (*changes.values(), plan.after.run_id))
    if plan.wake is not None and (woken := read_state(conn, plan.wake)) is not None:
        write_plan(conn, plan_wake(woken, now=now), now)


def ready_query(now: float, limit: int, run_id: str | None,
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


@functools.cache
def _update_sql(columns: tuple[str, ...]) -> str:
    return (f"UPDATE runs SET {', '.join(f'{c} = ?' for c in columns)} "
            "WHERE run_id = ?")


def index_damage(run_id: str) -> StoreCorruptedError:
    return StoreCorruptedError(
        f"the journal is damaged at run {run_id}: an index of the run table disagrees "
        "with the run's rows; nothing was changed (stalwart doctor checks every index)",
        run_id=run_id)

"""Reading and writing PostgreSQL's run rows for the plans of ``_runs``: no rule here.

:func:`write_plans` writes any number of plans in **one statement** (one round trip):
their events, and each run row's changed columns. With ``guard`` it writes only the rows
that still hold, in those columns, the values the plan was made from (its ``before``),
and returns the ids it wrote: a compare-and-set. That is how a step's lease check and
its outcome go to the server together (the plan says what a current lease is; the
statement only compares). Rows are locked in run id order (``FOR UPDATE``), as every
flusher locks them, so two such statements never deadlock on each other; a row that
another transaction changed meanwhile is compared in its new version (PostgreSQL's
recheck of locked rows), so a stale plan is never written. Large payloads go to
``stalwart_blobs`` in the same statement (``_blobs``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from ._blobs import split
from ._runs import STATE_COLUMNS, Plan, RunState, state_from_row

__all__ = ["lock_state", "write_plans"]

Conn = AsyncConnection[TupleRow]

_TYPES = {
    "status": "text", "result": "text", "error": "text", "outcome_digest": "text",
    "wake_at": "float8", "lease_owner": "text", "lease_token": "bigint",
    "lease_expires_at": "float8", "owner_host": "text", "owner_pid": "int",
    "cancel_requested": "bool", "wake_requested": "bool", "event_count": "int",
    "event_head": "text", "updated_at": "float8",
}
"""The SQL type of each run column a plan may write or compare."""

_EVENT_COLUMNS = ("run_id", "seq", "kind", "step_id", "name", "payload", "created_at",
                  "digest", "payload_ref")
_EVENT_TYPES = ("text", "int", "text", "text", "text", "text", "float8", "text", "text")
_BLOB_COLUMNS = ("hash", "content")
_BLOB_TYPES = ("text", "text")


async def lock_state(conn: Conn, run_id: str) -> RunState | None:
    """The run's state, its row locked until the transaction ends (``None``: no run)."""
    row = await (await conn.execute(
        f"SELECT {STATE_COLUMNS} FROM stalwart_runs WHERE run_id = %s FOR UPDATE",
        (run_id,))).fetchone()
    return state_from_row(row) if row else None


def _arrays(names: Sequence[str], types: Sequence[str]) -> str:
    """Parallel array parameters as rows with these column names."""
    return f"unnest({', '.join(f'%s::{t}[]' for t in types)}) AS x({', '.join(names)})"


@functools.cache
def _statement(columns: tuple[str, ...], guard: tuple[str, ...], events: bool,
               outcomes: bool, blobs: bool) -> str:
    names = ("run_id", *(f"was_{c}" for c in guard), *columns)
    types = ("text", *(_TYPES[c] for c in guard), *(_TYPES[c] for c in columns))
    ctes = [f"v AS (SELECT * FROM {_arrays(names, types)})"]
    if events:
        ctes.append(f"e AS (SELECT * FROM {_arrays(_EVENT_COLUMNS, _EVENT_TYPES)})")
    checks = [f"r.{c} IS NOT DISTINCT FROM v.was_{c}" for c in guard]
    if outcomes:  # a step already recorded would break the unique index: do not write
        checks.append(
            "NOT EXISTS (SELECT 1 FROM e JOIN stalwart_events x ON x.run_id = e.run_id "
            "AND x.step_id = e.step_id AND x.kind = 'step_completed' "
            "WHERE e.run_id = v.run_id AND e.kind = 'step_completed')")
    where = f" WHERE {' AND '.join(checks)}" if checks else ""
    ctes.append("ok AS (SELECT r.run_id FROM stalwart_runs r JOIN v ON v.run_id = r.run_id"
                f"{where} ORDER BY r.run_id FOR UPDATE OF r)")
    if events:
        ctes.append(f"ins AS (INSERT INTO stalwart_events ({', '.join(_EVENT_COLUMNS)}) "
                    "SELECT e.* FROM e JOIN ok ON ok.run_id = e.run_id)")
    if blobs:  # only the blobs of events written (a plan that no longer holds: none)
        ctes.append(f"b AS (SELECT * FROM {_arrays(_BLOB_COLUMNS, _BLOB_TYPES)})")
        ctes.append("insb AS (INSERT INTO stalwart_blobs (hash, content) SELECT b.hash, "
                    "b.content FROM b WHERE EXISTS (SELECT 1 FROM e JOIN ok ON ok.run_id "
                    "= e.run_id WHERE e.payload_ref = b.hash) ON CONFLICT (hash) DO NOTHING)")
    sets = ", ".join(f"{c} = v.{c}" for c in columns)
    return (f"WITH {', '.join(ctes)} UPDATE stalwart_runs r SET {sets} FROM v JOIN ok "
            "ON ok.run_id = v.run_id WHERE r.run_id = v.run_id RETURNING r.run_id")


def _value(value: Any) -> Any:
    return str(value) if isinstance(value, str) else value  # RunStatus -> its text


async def write_plans(conn: Conn, plans: Sequence[Plan], *,
                      guard: Sequence[str] = ()) -> set[str]:
    """Write ``plans`` (one per run), one statement per set of changed columns (and the
    wake-ups they name are the caller's); with ``guard``, only where the row still holds
    the plan's ``before`` values in those columns (and has no outcome yet for a step an
    event records). Returns the run ids written."""
    if len({plan.after.run_id for plan in plans}) != len(plans):
        raise ValueError("one plan per run in one write")
    shapes: dict[tuple[str, ...], list[tuple[Plan, dict[str, Any]]]] = {}
    for plan in plans:
        changes = plan.changes()
        if changes:  # (events always change the count)
            shapes.setdefault(tuple(changes), []).append((plan, changes))
    written: set[str] = set()
    for columns, group in shapes.items():
        events, blobs = split(ev for plan, _ in group for ev in plan.events)
        outcomes = bool(guard) and any(ev[2] == "step_completed" for ev in events)
        args: list[list[Any]] = [[plan.after.run_id for plan, _ in group]]
        args += [[_value(getattr(plan.before, c)) for plan, _ in group] for c in guard]
        args += [[_value(changes[c]) for _, changes in group] for c in columns]
        if events:
            args += [list(column) for column in zip(*events, strict=True)]
        if blobs:
            args += [list(column) for column in zip(*blobs, strict=True)]
        rows = await (await conn.execute(
            _statement(columns, tuple(guard), bool(events), outcomes, bool(blobs)), args
        )).fetchall()
        written.update(r[0] for r in rows)
    return written

"""Parameterized SQLite: values are bound, never spliced, and a tool's SQL does only
what its effect allows."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, LiteralString

from ..errors import UnsafeArgumentError

__all__ = ["sql_execute", "sql_query"]

Params = Sequence[Any] | Mapping[str, Any]

_READ = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                   sqlite3.SQLITE_RECURSIVE})
_WRITE = _READ | {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE,
                  sqlite3.SQLITE_TRANSACTION}
"""A change to rows (and the BEGIN the sqlite3 module issues before one)."""


def _run(conn: sqlite3.Connection, sql: str, params: Params,
         allowed: frozenset[int], what: str) -> sqlite3.Cursor:
    if not isinstance(sql, str):
        raise UnsafeArgumentError("SQL must be text")
    if isinstance(params, str | bytes):
        raise UnsafeArgumentError("params must be a sequence or a mapping of values, "
                                  "not a string")

    def authorize(action: int, *_: Any) -> int:
        return sqlite3.SQLITE_OK if action in allowed else sqlite3.SQLITE_DENY

    conn.set_authorizer(authorize)
    try:
        return conn.execute(sql, params)
    except sqlite3.ProgrammingError as exc:  # a DatabaseError too: first
        raise UnsafeArgumentError(f"not one parameterized statement: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        if "not authorized" in str(exc):
            raise UnsafeArgumentError(f"{what} may not do this: {exc}") from exc
        raise
    finally:
        conn.set_authorizer(None)


def sql_query(conn: sqlite3.Connection, sql: LiteralString, params: Params = (), *,
              max_rows: int = 1000) -> list[dict[str, Any]]:
    """Run one read-only, parameterized statement and return its rows as dicts.

    ``sql`` holds placeholders (``?`` or ``:name``) and ``params`` the values; its
    type, :data:`typing.LiteralString`, lets a type checker refuse SQL built from a
    model's text. SQLite's authorizer refuses anything but reading, so even spliced
    SQL cannot write, drop or attach; a second statement is refused.

    Raises:
        UnsafeArgumentError: more than one statement, the wrong number of values,
            or an attempt to write.
    """
    cursor = _run(conn, sql, params, _READ, "a read-only query")
    names = [d[0] for d in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchmany(max_rows)]


def sql_execute(conn: sqlite3.Connection, sql: LiteralString, params: Params = ()) -> int:
    """Run one parameterized INSERT, UPDATE or DELETE and return the rows changed
    (the caller commits). Schema changes, ``ATTACH``, ``PRAGMA`` and the like are
    refused by SQLite's authorizer.

    Raises:
        UnsafeArgumentError: more than one statement, the wrong number of values,
            or anything but a change to rows.
    """
    cursor = _run(conn, sql, params, _WRITE, "a row change")
    return cursor.rowcount

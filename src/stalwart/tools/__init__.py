"""Helpers for safe tool bodies: the classic injection-proof forms of three effects.

A model's arguments are data. These helpers keep them data where a tool turns them into
an effect, the way parameterized queries did for SQL:

* :func:`run_argv` / :func:`arun_argv`: a command as an argv list, never a shell string,
  optionally only from an allowlist of programs, in a minimal environment;
* :func:`confine` / :func:`open_confined`: a path inside a root, ``..`` and symlink
  escapes refused (``open_confined`` follows no symlink at all, so nothing can be
  swapped in between the check and the open);
* :func:`sql_query` / :func:`sql_execute`: one parameterized SQLite statement, its
  values bound, never spliced; a read-only query cannot write, a write cannot change
  the schema (SQLite's authorizer refuses it).

Each refuses with :class:`~stalwart.errors.UnsafeArgumentError`, which a tool lets
through: the model gets a ``tool_failed`` error that says why.
"""

from __future__ import annotations

from ._argv import ArgvResult as ArgvResult
from ._argv import arun_argv as arun_argv
from ._argv import run_argv as run_argv
from ._paths import confine as confine
from ._paths import open_confined as open_confined
from ._sql import sql_execute as sql_execute
from ._sql import sql_query as sql_query

__all__ = ["ArgvResult", "arun_argv", "confine", "open_confined", "run_argv", "sql_execute",
           "sql_query"]

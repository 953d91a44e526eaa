"""What every command shares: consoles, the store option, errors at the CLI boundary.

Output rules: data goes to stdout (tables, or JSON with ``--json``); an error is exactly
one line ``error: ...`` on stderr and a non-zero exit — 2 when the input was wrong (an
unknown workflow, run or store, invalid JSON, bad arguments), 1 when something failed
while running. No traceback reaches the user unless ``$STALWART_DEBUG`` is set.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Coroutine
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from .. import errors
from .._runtime import Runtime, open_store
from ..store._sqlite import SQLiteStore

__all__ = [
    "USAGE",
    "FAILURE",
    "CliError",
    "JsonOption",
    "StoreOption",
    "client_runtime",
    "console",
    "exit_code_for",
    "fmt_duration",
    "fmt_time",
    "parse_json",
    "preview",
    "print_json",
    "run_async",
    "store_hint",
]

T = TypeVar("T")

USAGE = 2
"""Exit code for wrong input: arguments, JSON, unknown names, unusable store files."""
FAILURE = 1
"""Exit code for a failure while doing the work (a run failed, the store broke...)."""

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        metavar="URL",
        help="Journal: a file path, sqlite:///PATH or postgresql://... "
        "[default: $STALWART_STORE or ./.stalwart/stalwart.db]",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


class CliError(Exception):
    """An error the CLI reports as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


_INPUT_ERRORS: tuple[type[errors.StalwartError], ...] = (
    errors.ConfigurationError,
    errors.SerializationError,
    errors.RunNotFoundError,
    errors.WorkflowNotFoundError,
    errors.NotAStalwartStoreError,
    errors.SchemaVersionError,
    errors.StoreCorruptedError,
)


def exit_code_for(exc: BaseException) -> int:
    """2 for errors in what the user passed, 1 for failures while running."""
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, (*_INPUT_ERRORS, json.JSONDecodeError)):
        return USAGE
    return FAILURE


def console() -> Console:
    """A console on the current stdout; 120 columns when it is not a terminal."""
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "120"))
    return Console(file=sys.stdout, width=width, highlight=False, soft_wrap=False)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (no console formatting, safe to pipe)."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio

    return asyncio.run(coro)


def parse_json(text: str | None, what: str) -> Any:
    """``text`` as JSON (``None`` stays ``None``); a :class:`CliError` if it is not."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}") from None


def client_runtime(store: str | None) -> Runtime:
    """A runtime that only reads and writes the journal (it executes nothing).

    An SQLite file that does not exist is an error here, rather than silently creating
    an empty journal in which the run cannot be.
    """
    st = open_store(store)
    if isinstance(st, SQLiteStore) and st.path != ":memory:" and not Path(st.path).exists():
        raise CliError(f"no stalwart journal at {st.path} (nothing has run with this store; "
                       "pass --store or set $STALWART_STORE)")
    return Runtime(st, worker=False)


def store_hint(store: str | None) -> str:
    """The ``--store`` part of a suggested command (empty when the default applies)."""
    if store is None:
        return ""
    return f" --store {_shell_quote(store)}"


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def fmt_time(ts: float | None, *, date: bool = False) -> str:
    if ts is None:
        return "-"
    dt = datetime.fromtimestamp(ts)
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if date else dt.strftime("%H:%M:%S.%f")[:-3]


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 120:
        return f"{int(minutes)}m{secs:02.0f}s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}h{int(minutes):02d}m"


def preview(text: str | None, limit: int = 60) -> str:
    """One line of a JSON value, shortened."""
    if text is None:
        return ""
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."

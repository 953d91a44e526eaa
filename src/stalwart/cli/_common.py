"""What every command shares: consoles, the store option, errors at the CLI boundary.

Output rules: data goes to stdout (tables, or JSON with ``--json``); an error is exactly
one line ``error: ...`` on stderr and a non-zero exit — 2 when the input was wrong (an
unknown workflow, run or store, invalid JSON, bad arguments), 1 when something failed
while running. No traceback reaches the user unless ``$STALWART_DEBUG`` is set.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .. import errors
from .._runtime import Runtime, open_store, runtime_of
from .._serde import ErrorInfo
from ..engine._workflow import Workflow
from ..store._base import RunRecord, RunStatus, Store
from ..store._sqlite import SQLiteStore

__all__ = [
    "USAGE",
    "FAILURE",
    "CliError",
    "JsonOption",
    "StoreOption",
    "client_runtime",
    "command_store",
    "executing_runtime",
    "error_info",
    "error_json",
    "exit_code_for",
    "failure_line",
    "fmt_duration",
    "fmt_time",
    "lease_note",
    "parse_json",
    "preview",
    "print_json",
    "run_async",
    "store_hint",
    "store_hint_for",
]

T = TypeVar("T")

DEMO_STORE = Path(".stalwart") / "demo.db"
"""Where ``stalwart demo`` keeps its journal unless told otherwise."""

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
        "[default: the store of the imported module's Runtime, else $STALWART_STORE, "
        "else ./.stalwart/stalwart.db]",
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
    errors.ApprovalNotFoundError,
    errors.ApprovalConflictError,
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


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (no console formatting, safe to pipe)."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def parse_json(text: str | None, what: str) -> Any:
    """``text`` as JSON (``None`` stays ``None``); a :class:`CliError` if it is not."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}") from None


def error_info(text: str | None) -> ErrorInfo:
    """A journaled error (``ErrorInfo`` JSON); text that is not one, as its message."""
    try:
        return ErrorInfo.from_json(text or "")
    except (ValueError, KeyError, TypeError):
        return ErrorInfo(type="unknown", message=text or "", traceback="")


def failure_line(rec: RunRecord) -> str:
    """How a run that did not complete ended, in one line (its error's type and message,
    not the traceback the journal keeps)."""
    if rec.status == RunStatus.CANCELLED:
        return f"run {rec.run_id} was cancelled"
    info = error_info(rec.error)
    what = (rec.error or "unknown error") if info.type == "unknown" \
        else f"{info.type}: {info.message}"
    return f"run {rec.run_id} {rec.status}: {what}"


def lease_note(rec: RunRecord, *, now: float, host: str,
               pid_alive: Callable[[int], bool]) -> str | None:
    """Whether a running run's owner is gone, as a worker would judge it: its pid no
    longer runs on this host (taken over at once), or its lease expired (taken over by
    any worker). ``None`` while its owner may still hold it."""
    if rec.status != RunStatus.RUNNING:
        return None
    if rec.owner_host == host and rec.owner_pid is not None and not pid_alive(rec.owner_pid):
        return "owner gone; reclaimable now"
    if rec.lease_expires_at is not None and rec.lease_expires_at < now:
        return (f"lease expired {fmt_duration(now - rec.lease_expires_at)} ago; "
                "reclaimable now")
    return None


def error_json(rec: RunRecord) -> dict[str, str] | None:
    """A run's error as ``--json`` outputs that are not the full record show it."""
    if rec.error is None:
        return None
    info = error_info(rec.error)
    return {"type": info.type, "message": info.message}


def client_runtime(store: str | Store | None, *, read_only: bool = True) -> Runtime:
    """A runtime that executes nothing: with ``read_only`` (the views) its store never
    writes — SQLite opened ``mode=ro``, PostgreSQL sessions read-only, nothing created;
    else (signal, cancel, dlq retry) it reads read-only until its first write.

    A journal that does not exist is an error here, rather than silently creating an
    empty one in which the run cannot be.
    """
    st = open_store(store, access="read" if read_only else "client")
    if isinstance(st, SQLiteStore) and st.path != ":memory:":
        path = Path(st.path)
        if not path.exists():
            raise CliError(f"no stalwart journal at {st.path} (nothing has run with this "
                           f"store; pass --store or set $STALWART_STORE){_demo_hint(path)}")
        if path.is_file() and path.stat().st_size == 0:  # not made one by a look at it
            raise CliError(f"no stalwart journal at {st.path} (the file is empty; pass "
                           "--store or set $STALWART_STORE)")
    return Runtime(st, worker=False)


def _demo_hint(missing: Path) -> str:
    """A newcomer's next command after ``stalwart demo`` is often ``stalwart runs list``,
    which looks in the default journal beside the demo's: say where the demo's runs are."""
    if DEMO_STORE.is_file() and missing.absolute().parent == DEMO_STORE.absolute().parent:
        return f"; the demo's runs are in {DEMO_STORE}: --store {DEMO_STORE}"
    return ""


def _home(workflows: Iterable[Workflow[Any, Any]]) -> Runtime | None:
    """The one runtime that made ``workflows`` (``None``: no runtime made any)."""
    wfs = list(workflows)
    made = [(wf, home) for wf in wfs if (home := runtime_of(wf)) is not None]
    homes = {id(home): home for _, home in made}
    if len(homes) > 1:
        names = ", ".join(sorted(wf.name for wf, _ in made))
        raise CliError(f"the workflows {names} were made by different runtimes; execute "
                       "the runs of one runtime at a time (name the run)")
    return next(iter(homes.values()), None)


def command_store(flag: str | None,
                  named: Iterable[Workflow[Any, Any]] = ()) -> str | Store | None:
    """The journal a command works on; the one rule for every command:

    1. ``--store``, when given;
    2. else the store of the ``Runtime`` that made the workflows the command line names
       (``run MODULE:WF``, ``--import MODULE``): the module says where its runs are;
    3. else ``$STALWART_STORE``;
    4. else ``./.stalwart/stalwart.db``.

    (A module's ``Runtime()`` without a store reads 3 and 4 itself.) Workflows imported
    later because a run names them change nothing: that run was found in this journal.
    ``None`` means "3, else 4" (:func:`open_store` decides).
    """
    if flag is not None:
        return flag
    home = _home(named)
    arg = home._store_arg if home is not None else None
    return os.fspath(arg) if isinstance(arg, os.PathLike) else arg


def executing_runtime(workflows: Iterable[Workflow[Any, Any]], store: str | Store | None,
                      **overrides: Any) -> Runtime:
    """The runtime that executes ``workflows`` here, on ``store`` (from
    :func:`command_store`): a copy of the one their module made them with
    (``@app.workflow``: its budget, models, prices, policies, tracing...), or a plain
    ``Runtime`` for workflows no runtime made."""
    home = _home(workflows)
    if home is None:
        return Runtime(store, **overrides)
    return home._like(open_store(store), **overrides)


def store_hint_for(store: Store) -> str:
    """The ``--store`` part of a suggested command that reads ``store`` (empty when the
    default journal is that one)."""
    path = getattr(store, "path", None)
    if isinstance(store, SQLiteStore) and path is not None:
        default = open_store(None)
        if isinstance(default, SQLiteStore) and Path(default.path).resolve() == Path(
                path).resolve():
            return ""
        return store_hint(str(path))
    url = getattr(store, "url", None)
    return store_hint(url) if isinstance(url, str) else ""


def store_hint(store: str | Store | None) -> str:
    """The ``--store`` part of a suggested command (empty when the default applies)."""
    if store is None:
        return ""
    if not isinstance(store, str):
        return store_hint_for(store)
    return f" --store {_shell_quote(store)}"


def _shell_quote(text: str) -> str:
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

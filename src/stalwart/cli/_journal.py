"""Opening the journal a command executes runs on, with one line when it cannot be used.

A ``--store`` in a folder that does not exist and cannot be made (``/proc/nope/x.db``)
or cannot be written (a read-only folder or file system) fails deep in ``os.mkdir`` or
``sqlite3.connect`` with an ``OSError`` or ``sqlite3.OperationalError`` ("unable to open
database file") that names neither the journal nor the reason. The commands that
execute runs open their runtime through :func:`open_journal` first, so the user reads
which path and why, and exit status 2 (an unusable store is bad input).
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from .._runtime import Runtime
from ..errors import StoreError
from ..store._base import Store
from ._common import USAGE, CliError

__all__ = ["journal_error", "open_journal"]


async def open_journal(rt: Runtime) -> None:
    """Open ``rt`` (its store, and its worker when it has one).

    Raises:
        CliError: the journal's file or folder cannot be made or opened (exit 2).
    """
    try:
        await rt.open()
    except (OSError, sqlite3.Error) as exc:
        raise journal_error(rt.store, exc) from None
    except StoreError as exc:
        # The store types every sqlite3 error; one that could not open the file at all
        # (not a foreign, damaged or other-version journal) is explained here.
        cause = exc.__cause__
        if type(exc) is StoreError and not exc.retryable and isinstance(
                cause, (OSError, sqlite3.Error)):
            raise journal_error(rt.store, cause) from None
        raise


def journal_error(store: Store | Path, exc: OSError | sqlite3.Error) -> CliError:
    """The one-line error for a journal (a store, or a journal file's path) that ``exc``
    says cannot be used."""
    path = store if isinstance(store, Path) else getattr(store, "path", None)
    where = str(path) if path is not None else str(getattr(store, "url", store))
    return CliError(f"cannot use the journal {where}: {_why(where, exc)}", USAGE)


def _why(where: str, exc: OSError | sqlite3.Error) -> str:
    folder = Path(where).parent
    if isinstance(exc, OSError):
        if exc.filename is not None and Path(str(exc.filename)) != Path(where):
            return f"its folder {folder} cannot be created ({exc.strerror or exc})"
        return f"{exc.strerror or exc}"
    if not folder.is_dir():
        return f"its folder {folder} does not exist"
    try:  # SQLite does not say why it could not open the file; a probe does
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as probe:
        return f"files cannot be created in its folder {folder} ({probe.strerror or probe})"
    return f"SQLite cannot open it ({exc})"

"""The SQLite journal's durability setting, read from the connection that commits.

``PRAGMA synchronous`` is a property of a connection, not of the file: what counts is
the value on the store's own connection, for a new journal and for one reopened.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import stalwart as sw
from stalwart.store import SQLiteStore

FULL, NORMAL = 2, 1  # what PRAGMA synchronous reads back


async def _setting(store: SQLiteStore) -> tuple[int, str]:
    """``synchronous`` and ``journal_mode`` on the connection the store commits with."""
    def read(conn: object) -> tuple[int, str]:
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]  # type: ignore[attr-defined]
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]  # type: ignore[attr-defined]
        return int(sync), str(mode)

    return await store._write(read)


@pytest.mark.parametrize("reopen", [False, True], ids=["new", "reopened"])
async def test_the_default_journal_commits_with_synchronous_full_in_wal(
        tmp_path: Path, reopen: bool) -> None:
    """A runtime's default store commits with synchronous=FULL in WAL mode: a committed
    step survives a power loss, not only a process crash."""
    path = tmp_path / "j.db"
    if reopen:
        first = SQLiteStore(path)
        await first.open()
        await first.close()
    app = sw.Runtime(path)
    async with app:
        assert isinstance(app.store, SQLiteStore)
        assert await _setting(app.store) == (FULL, "wal")


@pytest.mark.parametrize("reopen", [False, True], ids=["new", "reopened"])
async def test_synchronous_normal_is_applied_when_asked_for(tmp_path: Path,
                                                             reopen: bool) -> None:
    """SQLiteStore(synchronous="NORMAL") is what its connection uses."""
    path = tmp_path / "j.db"
    if reopen:
        first = SQLiteStore(path)
        await first.open()
        await first.close()
    store = SQLiteStore(path, synchronous="NORMAL")
    await store.open()
    try:
        assert await _setting(store) == (NORMAL, "wal")
    finally:
        await store.close()

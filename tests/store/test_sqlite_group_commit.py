"""SQLite group commit: concurrent writes of every kind share commits, and fail alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stalwart.errors import RunNotFoundError
from stalwart.store import SQLiteStore


async def test_concurrent_run_starts_share_commits(tmp_path: Path) -> None:
    """Fifty concurrent create_run calls are all durable in far fewer than fifty commits."""
    store = SQLiteStore(tmp_path / "journal.db")
    await store.open()
    try:
        before = store.commits
        created = await asyncio.gather(*(
            store.create_run(run_id=f"r{i}", workflow="wf", input="{}", now=1.0)
            for i in range(50)))
        assert all(new for _, new in created)
        assert store.commits - before < 25
    finally:
        await store.close()
    reopened = SQLiteStore(tmp_path / "journal.db")
    await reopened.open()
    try:
        assert len(await reopened.list_runs(limit=100)) == 50
    finally:
        await reopened.close()


async def test_a_failing_write_does_not_fail_its_batch(tmp_path: Path) -> None:
    """A write that raises is undone alone; the writes committed with it stand."""
    store = SQLiteStore(tmp_path / "journal.db")
    await store.open()
    try:
        results = await asyncio.gather(
            store.create_run(run_id="a", workflow="wf", input="{}", now=1.0),
            store.send_signal("missing", "go", "null", now=1.0),
            store.create_run(run_id="b", workflow="wf", input="{}", now=1.0),
            return_exceptions=True)
        assert isinstance(results[1], RunNotFoundError)
        assert [r[0].run_id for r in (results[0], results[2])] == ["a", "b"]  # type: ignore[index]
        assert {r.run_id for r in await store.list_runs()} == {"a", "b"}
        with pytest.raises(RunNotFoundError):
            await store.request_cancel("missing", now=1.0)
    finally:
        await store.close()

"""``Runtime.approvals()`` reads the approval events through the store's index, never a
whole journal, and lists what a read of the whole journals lists; deciding still loads
and checks the whole journal. On the in-memory store, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import stalwart as sw
from stalwart.engine._approval import waiting
from stalwart.store import EventKind, Finish, NewEvent, Owner, RunStatus, Store
from stalwart.store._blobs import BLOB_THRESHOLD
from stalwart.testing import MemoryStore, postgres_schema

from .conftest import PG_ENV

DOC = "y" * (BLOB_THRESHOLD + 10)  # a payload the SQL stores keep as a blob
UNFINISHED = (RunStatus.WAITING, RunStatus.RUNNING, RunStatus.PENDING)
T0 = 1_000.0


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store | str]:
    """The store (memory) or its location (SQLite, a PostgreSQL schema of its own)."""
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        yield str(tmp_path / "journal.db")
        return
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"set {PG_ENV}=postgresql://... to run the PostgreSQL tests")
    with postgres_schema(url, prefix="stalwart_listing") as scoped:
        yield scoped


def runtime(journal: Store | str, *, worker: bool) -> sw.Runtime:
    if isinstance(journal, MemoryStore):
        return sw.Runtime(journal, clock=sw.FakeClock(autojump=True), worker=worker)
    return sw.Runtime(journal, worker=worker)


def define(app: sw.Runtime) -> Any:
    def work(i: int) -> int:
        return i

    @app.workflow(name="refund")
    async def refund(ctx: sw.Context, key: str, steps: int, big: bool) -> str:
        for i in range(steps):
            await ctx.step(work, i)
        payload = {"key": key, "doc": DOC if big else None}
        if (await ctx.approval("refund", payload)).approved and key == "c":
            await ctx.approval("again", {"key": key})
        return "done"

    return refund


async def asked(app: sw.Runtime, run_id: str, name: str) -> sw.ApprovalRequest:
    """The run's pending approval ``name``, once the run has journaled it (the store is
    what is waited on; bounded)."""
    for _ in range(5_000):
        found = [r for r in await app.approvals(run_id) if r.name == name]
        if found:
            return found[0]
        await asyncio.sleep(0 if isinstance(app.store, MemoryStore) else 0.002)
    raise AssertionError(f"run {run_id} never asked for {name!r}")


async def full_scan(app: sw.Runtime) -> list[sw.ApprovalRequest]:
    """The listing as it was: every unfinished run's whole journal and queue."""
    out: list[sw.ApprovalRequest] = []
    for status in UNFINISHED:
        for rec in await app.store.list_runs(status=status, limit=1000):
            queued = [name for name, _ in await app.store.pending_signals(rec.run_id)]
            out += waiting(rec.run_id, await app.store.load_events(rec.run_id), queued)
    return sorted(out, key=lambda r: r.requested_at)


@pytest.fixture
async def parked(journal: Store | str) -> AsyncIterator[sw.Runtime]:
    """Runs parked by a worker: a (pending), b (pending, a blob payload), c (its first
    approval approved and taken, its second pending), d (pending, then a decision sent
    that no worker took); returned: a runtime that executes nothing."""
    async with runtime(journal, worker=True) as app:
        wf = define(app)
        for key, big in (("a", False), ("b", True), ("c", False), ("d", False)):
            await app.start(wf, key, 20, big, run_id=key)
        first = await asked(app, "c", "refund")
        await app.approve("c", first.step_id, by="ana", token=first.token)
        await asked(app, "c", "again")
        for key in "abd":
            await asked(app, key, "refund")
    async with runtime(journal, worker=False) as idle:
        define(idle)
        d = (await idle.approvals("d"))[0]
        await idle.approve("d", d.step_id, by="bob", token=d.token)
        yield idle


def no_whole_journals(app: sw.Runtime, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``load_events`` fail on ``app``'s store; the run ids it was asked for."""
    loaded: list[str] = []

    async def refuse(run_id: str) -> Any:
        loaded.append(run_id)
        raise AssertionError(f"the listing loaded the whole journal of {run_id}")

    monkeypatch.setattr(app.store, "load_events", refuse)
    return loaded


async def test_the_listing_is_that_of_whole_journals(parked: sw.Runtime) -> None:
    """Pending: a, b (its blob payload whole), c's second approval; not c's first
    (decided) nor d's (its decision queued, not taken)."""
    found = await parked.approvals()
    assert found == await full_scan(parked)
    assert sorted((r.run_id, r.name) for r in found) == [
        ("a", "refund"), ("b", "refund"), ("c", "again")]
    assert next(r for r in found if r.run_id == "b").payload == {"key": "b", "doc": DOC}
    assert await parked.approvals("d") == []


async def test_the_listing_loads_no_whole_journal_and_deciding_does(
        parked: sw.Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """approvals() (all, and of one run) never calls load_events; approve() does."""
    expected = await parked.approvals()
    loaded = no_whole_journals(parked, monkeypatch)
    assert await parked.approvals() == expected
    assert [r.name for r in await parked.approvals("c")] == ["again"]
    assert loaded == []
    with pytest.raises(AssertionError, match="whole journal of a"):
        await parked.approve("a", "refund", by="ana")
    assert loaded == ["a"]


async def test_a_journal_from_before_the_index_lists_the_same(
        parked: sw.Runtime, journal: Store | str) -> None:
    """The index dropped (a journal written before it): the same listing, read
    without it; a writer that opens the journal adds it back."""
    if isinstance(journal, MemoryStore):
        pytest.skip("the in-memory store's index is built with its events")
    expected = await parked.approvals()
    await parked.close()
    if isinstance(journal, str) and "://" not in journal:
        with sqlite3.connect(journal) as conn:
            conn.execute("DROP INDEX events_approvals")
        conn.close()
        indexes = "SELECT name FROM sqlite_master WHERE name = 'events_approvals'"
    else:
        import psycopg

        with psycopg.connect(str(journal), autocommit=True) as pg:
            pg.execute("DROP INDEX stalwart_events_approvals")
        indexes = ("SELECT indexname FROM pg_indexes WHERE indexname = "
                   "'stalwart_events_approvals' AND schemaname = current_schema()")
    async with sw.Runtime(str(journal), worker=False) as reader:
        assert await reader.approvals() == expected
    assert not _rows(journal, indexes)
    writer = sw.Runtime(str(journal), worker=True)
    define(writer)  # before it opens: its worker takes the runs up at once
    async with writer:
        assert await writer.approvals() == expected
    assert _rows(journal, indexes)


def _rows(journal: Store | str, sql: str) -> list[Any]:
    if "://" not in str(journal):
        with sqlite3.connect(str(journal)) as conn:
            rows = conn.execute(sql).fetchall()
        conn.close()
        return rows
    import psycopg

    with psycopg.connect(str(journal), autocommit=True) as pg:
        return pg.execute(sql).fetchall()


class ClaimingStore:
    """A MemoryStore whose pending runs a worker claims right after the listing reads
    the runs of ``status`` (the moment a claim would hide them from a listing that
    reads PENDING last)."""

    def __init__(self, inner: MemoryStore, status: RunStatus) -> None:
        self.inner = inner
        self.status = status

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def list_runs(self, **kw: Any) -> Any:
        found = await self.inner.list_runs(**kw)
        if kw.get("status") == self.status:
            await self.inner.claim(Owner(id="w", host="h", pid=1), now=T0,
                                   lease_seconds=30, limit=10)
        return found


@pytest.mark.parametrize("status", [RunStatus.PENDING, RunStatus.RUNNING])
async def test_a_run_claimed_while_listing_is_listed_once(status: RunStatus) -> None:
    """A pending run claimed between the listing's reads of the statuses is listed,
    once, whenever the claim falls."""
    inner = MemoryStore()
    await inner.create_run(run_id="r", workflow="wf", input="[]", now=T0)
    [lease] = await inner.claim(Owner(id="v", host="h", pid=1), now=T0, lease_seconds=30,
                                limit=1)
    await inner.append(lease, [NewEvent(
        EventKind.SIGNAL_WAIT_STARTED, "0", "approval:refund",
        json.dumps({"approval": "refund", "token": "t", "payload": 1}))], now=T0,
        finish=Finish(RunStatus.PENDING))
    store = ClaimingStore(inner, status)
    async with sw.Runtime(store, clock=sw.FakeClock(T0), worker=False) as app:  # type: ignore[arg-type]
        assert [(r.run_id, r.name) for r in await app.approvals()] == [("r", "refund")]
    assert (await inner.get_run("r")).status == RunStatus.RUNNING  # type: ignore[union-attr]

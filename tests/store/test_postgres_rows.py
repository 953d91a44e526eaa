"""PostgreSQL's one-statement writes: a step's lease check and outcome in one round trip.

Statements are counted on the client, at psycopg's boundary (every cursor execute, and a
transaction's BEGIN and COMMIT), for the store's own connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stalwart.errors import LeaseLostError
from stalwart.store import EventKind, Finish, Lease, NewEvent, Owner, RunStatus

psycopg = pytest.importorskip("psycopg")
from stalwart.store._postgres import PostgresStore  # noqa: E402

A = Owner(id="a", host="h", pid=1)
B = Owner(id="b", host="h", pid=2)


def step(step_id: str) -> NewEvent:
    return NewEvent(EventKind.STEP_COMPLETED, step_id=step_id, name="f", payload="1")


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements psycopg sends from now on (BEGIN and COMMIT included; the
    notifier's NOTIFYs, which carry many runs' wake-ups at once, left out)."""
    sent: list[str] = []
    execute = psycopg.AsyncCursor.execute
    enter, leave = psycopg.AsyncTransaction.__aenter__, psycopg.AsyncTransaction.__aexit__

    async def counted(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        text = " ".join(str(query).split())
        if not text.startswith("SELECT pg_notify"):  # coalesced wake-ups, sent apart
            sent.append(text)
        return await execute(self, query, params, **kw)

    async def begin(self: Any) -> Any:
        sent.append("BEGIN")
        return await enter(self)

    async def end(self: Any, *exc: Any) -> Any:
        sent.append("COMMIT" if exc[0] is None else "ROLLBACK")
        return await leave(self, *exc)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", counted)
    monkeypatch.setattr(psycopg.AsyncTransaction, "__aenter__", begin)
    monkeypatch.setattr(psycopg.AsyncTransaction, "__aexit__", end)
    return sent


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(pg_url)
    await store.open()
    yield store
    await store.close()


async def held(pg: PostgresStore, run_id: str = "r", owner: Owner = A,
               now: float = 1.0, lease_seconds: float = 30) -> Lease:
    await pg.create_run(run_id=run_id, workflow="wf", input="[]", now=now)
    [lease] = await pg.claim(owner, now=now, lease_seconds=lease_seconds, limit=1,
                             run_id=run_id)
    return lease


async def test_a_step_on_a_held_lease_is_one_statement(pg: PostgresStore,
                                                       statements: list[str]) -> None:
    """Five steps and the finish of a run this store claimed: one statement each (the
    lease check, the events and the row in one conditional write), no BEGIN/COMMIT."""
    lease = await held(pg)
    statements.clear()
    for i in range(5):
        result = await pg.append(lease, [step(str(i))], now=2.0 + i)
        assert not result.cancel_requested
    await pg.append(lease, [NewEvent(EventKind.RUN_COMPLETED, payload='"ok"')], now=8.0,
                    finish=Finish(RunStatus.COMPLETED, result='"ok"'))
    assert len(statements) == 6, statements
    assert all(s.startswith("WITH v AS") for s in statements)
    events = await pg.load_events("r")
    assert [e.seq for e in events] == list(range(1, 9))
    rec = await pg.get_run("r")
    assert rec is not None and (rec.status, rec.result, rec.lease_owner) == (
        RunStatus.COMPLETED, '"ok"', None)


async def test_a_row_changed_meanwhile_is_planned_again_from_its_locked_row(
        pg: PostgresStore, pg_url: str, statements: list[str]) -> None:
    """A cancel from another process flags the run behind this store's back: the next
    step's conditional write misses, the store locks the row, plans again and writes,
    and reports the cancel; the step after is one statement again."""
    lease = await held(pg)
    other = PostgresStore(pg_url)
    await other.open()
    try:
        await other.request_cancel("r", now=2.0)
    finally:
        await other.close()
    statements.clear()
    assert (await pg.append(lease, [step("0")], now=3.0)).cancel_requested
    assert "BEGIN" in statements and any("FOR UPDATE" in s for s in statements)
    statements.clear()
    assert (await pg.append(lease, [step("1")], now=4.0)).cancel_requested
    assert len(statements) == 1 and statements[0].startswith("WITH v AS")
    assert [e.step_id for e in await pg.load_events("r")][-2:] == ["0", "1"]


async def test_a_fenced_out_writer_changes_nothing(pg: PostgresStore, pg_url: str) -> None:
    """Another worker took the expired lease over: the old owner's step and finish are
    refused with LeaseLostError, and the journal is as the new owner left it."""
    lease = await held(pg, lease_seconds=5)
    other = PostgresStore(pg_url)
    await other.open()
    try:
        [taken] = await other.claim(B, now=10.0, lease_seconds=30, limit=1)
        assert taken.token > lease.token
        before = await other.load_events("r")
        with pytest.raises(LeaseLostError):
            await pg.append(lease, [step("0")], now=11.0)
        with pytest.raises(LeaseLostError):
            await pg.append(lease, [], now=11.0, finish=Finish(RunStatus.COMPLETED,
                                                               result="1"))
        assert await other.load_events("r") == before
        rec = await other.get_run("r")
        assert rec is not None and (rec.status, rec.lease_owner) == (RunStatus.RUNNING, "b")
    finally:
        await other.close()


async def test_concurrent_appends_of_one_run_are_one_write_in_order(
        pg: PostgresStore, statements: list[str]) -> None:
    """Three appends of one run queued together are written by one statement, numbered
    in the order they were made."""
    lease = await held(pg)
    statements.clear()
    await asyncio.gather(*(pg.append(lease, [step(s)], now=2.0) for s in "abc"))
    assert len(statements) == 1, statements
    events = await pg.load_events("r")
    assert [(e.seq, e.step_id) for e in events[2:]] == [(3, "a"), (4, "b"), (5, "c")]


async def test_a_second_outcome_of_a_step_fails_alone(pg: PostgresStore) -> None:
    """Two appends recording one step, queued together with another run's step: the
    first lands, the second is refused, the other run's step lands."""
    lease = await held(pg, "r")
    other = await held(pg, "s")
    results = await asyncio.gather(
        pg.append(lease, [step("0")], now=2.0), pg.append(lease, [step("0")], now=2.0),
        pg.append(other, [step("0")], now=2.0), return_exceptions=True)
    assert not isinstance(results[0], BaseException)
    assert isinstance(results[1], LeaseLostError)
    assert not isinstance(results[2], BaseException)
    assert [e.step_id for e in await pg.load_events("r")] == [None, None, "0"]
    assert [e.step_id for e in await pg.load_events("s")] == [None, None, "0"]


async def test_a_finish_that_wakes_a_parent_is_one_transaction(pg: PostgresStore) -> None:
    """A child's finish and its parent's wake-up commit together (the locked path)."""
    parent = await held(pg, "p")
    await pg.append(parent, [], now=2.0, finish=Finish(RunStatus.WAITING, wake_at=99.0))
    await pg.create_run(run_id="c", workflow="wf", input="[]", now=3.0)
    sql_parent = "UPDATE stalwart_runs SET parent_run_id = 'p' WHERE run_id = 'c'"
    async with pg._connection() as conn:
        await conn.execute(sql_parent)  # a child of p (linked here for brevity)
    [child] = await pg.claim(A, now=4.0, lease_seconds=30, limit=1, run_id="c")
    await pg.append(child, [], now=5.0, finish=Finish(RunStatus.COMPLETED, result="1"))
    rec = await pg.get_run("p")
    assert rec is not None and (rec.status, rec.wake_at) == (RunStatus.PENDING, None)


async def test_an_append_never_waits_for_ever_on_a_failed_flush(
        pg: PostgresStore, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A flush that fails in an unforeseen way answers every append in it with a
    StoreError (and logs the failure) instead of leaving the callers waiting."""
    from stalwart.errors import StoreError
    from stalwart.store import _postgres

    lease = await held(pg)

    def broken(*_: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(_postgres, "plan_from", broken)
    with pytest.raises(StoreError, match="a bug"):
        await asyncio.wait_for(pg.append(lease, [step("0")], now=2.0), 10)
    assert "failed unexpectedly" in caplog.text
    monkeypatch.undo()
    await pg.append(lease, [step("0")], now=3.0)  # the store goes on

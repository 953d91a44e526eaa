"""``Store.approval_journals``: the approval events of some runs, read through the
store's index of them, give the answers a read of the whole journals gives; on SQLite,
PostgreSQL and the in-memory store (see ``conftest.py``).

The journals are written as ``ctx.approval`` writes them (a request, a decision taken
from its signal, a timeout), among steps, an ordinary signal wait and a step whose name
merely looks like an approval's.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from stalwart.engine._approval import (
    ApprovalRequest,
    Decision,
    approval_token,
    decision_signal,
    waiting,
)
from stalwart.errors import StoreCorruptedError
from stalwart.store import EventKind, Finish, Lease, NewEvent, Owner, RunStatus, Store
from stalwart.store._approvals import is_approval_event
from stalwart.store._blobs import BLOB_THRESHOLD
from stalwart.testing import MemoryStore

StoreFactory = Callable[[], Awaitable[Store]]
A = Owner(id="worker-a", host="host-a", pid=101)
T0 = 1_000.0
BIG = {"doc": "x" * (BLOB_THRESHOLD + 100)}  # stored as a blob by the SQL stores


def asked(run_id: str, step_id: str, name: str, payload: Any) -> NewEvent:
    token = approval_token(run_id, step_id, json.dumps(payload))
    return NewEvent(EventKind.SIGNAL_WAIT_STARTED, step_id, f"approval:{name}", json.dumps(
        {"deadline": None, "approval": name, "token": token, "payload": payload}))


def decision(approved: bool, by: str = "ana", token: str = "t") -> str:
    return json.dumps(Decision(approved=approved, by=by, at=T0, comment=None,
                               token=token).as_json())


def steps(n: int, first: int = 0) -> list[NewEvent]:
    return [NewEvent(EventKind.STEP_COMPLETED, str(i), "f", f'"out {i}"')
            for i in range(first, first + n)]


async def start(store: Store, run_id: str) -> Lease:
    await store.create_run(run_id=run_id, workflow="wf", input="[]", now=T0)
    [lease] = await store.claim(A, now=T0, lease_seconds=300, limit=1, run_id=run_id)
    return lease


async def park(store: Store, lease: Lease, events: list[NewEvent]) -> None:
    await store.append(lease, events, now=T0 + 1, finish=Finish(RunStatus.WAITING))


async def journals(store: Store) -> None:
    """Seven runs, each a case of the listing."""
    # r1: one approval pending among steps.
    await park(store, await start(store, "r1"), [*steps(5), asked("r1", "5", "refund", 30)])
    # r2: a decided approval (its signal taken), then a second one pending.
    lease = await start(store, "r2")
    await store.append(lease, [*steps(2), asked("r2", "2", "refund", 1)], now=T0 + 1)
    await store.send_signal("r2", decision_signal("2"), decision(True), now=T0 + 2)
    assert await store.take_signal(lease, decision_signal("2"), "2", now=T0 + 3)
    await park(store, lease, [*steps(2, 3), asked("r2", "5", "refund", 2)])
    # r3: a decision sent and not yet taken: not pending.
    await park(store, await start(store, "r3"), [*steps(1), asked("r3", "1", "ship", "x")])
    await store.send_signal("r3", decision_signal("1"), decision(False), now=T0 + 2)
    # r4: a payload stored as a blob (SQL stores).
    await park(store, await start(store, "r4"), [asked("r4", "0", "publish", BIG)])
    # r5: an approval that timed out with its default.
    await park(store, await start(store, "r5"), [
        asked("r5", "0", "refund", 5),
        NewEvent(EventKind.SIGNAL_TIMED_OUT, "0", "approval:refund",
                 decision(False, by="timeout")),
        asked("r5", "1", "again", 6)])
    # r6: no approval: a signal wait, a step named like an approval, a queued signal.
    lease = await start(store, "r6")
    await park(store, lease, [
        NewEvent(EventKind.STEP_COMPLETED, "0", "approval:fake", '"no"'),
        NewEvent(EventKind.SIGNAL_WAIT_STARTED, "1", "go", None)])
    await store.send_signal("r6", "go", '"now"', now=T0 + 2)
    # r7: finished, its approval never decided.
    lease = await start(store, "r7")
    await store.append(lease, [asked("r7", "0", "refund", 7)], now=T0 + 1,
                       finish=Finish(RunStatus.FAILED, error="{}"))


RUNS = ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "nope"]


async def full_scan(store: Store, run_ids: list[str]) -> list[ApprovalRequest]:
    """The listing as it was: every run's whole journal and queue."""
    out: list[ApprovalRequest] = []
    for run_id in run_ids:
        queued = [name for name, _ in await store.pending_signals(run_id)]
        out += waiting(run_id, await store.load_events(run_id), queued)
    return out


async def indexed(store: Store, run_ids: list[str]) -> list[ApprovalRequest]:
    out: list[ApprovalRequest] = []
    for journal in await store.approval_journals(run_ids):
        out += waiting(journal.run_id, journal.events, journal.queued)
    return out


async def test_the_index_gives_the_answers_of_whole_journals(store: Store) -> None:
    """Pending approvals through the index equal those of the whole journals: a
    decided one and a queued decision are not pending, a blob payload is resolved."""
    await journals(store)
    found = await indexed(store, RUNS)
    assert found == await full_scan(store, RUNS)
    assert [(r.run_id, r.step_id, r.name) for r in found] == [
        ("r1", "5", "refund"), ("r2", "5", "refund"), ("r4", "0", "publish"),
        ("r5", "1", "again"), ("r7", "0", "refund")]
    assert found[2].payload == BIG


async def test_each_journal_is_the_approval_events_of_the_whole_one(store: Store) -> None:
    """The events read are exactly the approval events of the journal, in order (the
    decision of r2 included), and the queue the decision signals not yet taken."""
    await journals(store)
    got = {j.run_id: j for j in await store.approval_journals(RUNS)}
    assert list(got) == ["r1", "r2", "r3", "r4", "r5", "r7"]
    for run_id, journal in got.items():
        whole = await store.load_events(run_id)
        assert journal.events == tuple(e for e in whole if is_approval_event(e.kind, e.name))
    assert [e.kind for e in got["r2"].events] == [
        EventKind.SIGNAL_WAIT_STARTED, EventKind.SIGNAL_RECEIVED,
        EventKind.SIGNAL_WAIT_STARTED]
    assert got["r3"].queued == (decision_signal("1"),)
    assert got["r1"].queued == ()


async def test_order_and_repeats_of_the_ids_are_the_callers(store: Store) -> None:
    """Journals come in the order asked, each once; an empty list reads nothing."""
    await journals(store)
    assert [j.run_id for j in await store.approval_journals(["r4", "r1", "r4"])] == [
        "r4", "r1"]
    assert await store.approval_journals([]) == []


async def test_many_runs_at_once(store: Store) -> None:
    """More runs than one SQL statement takes (SQLite reads them 500 at a time)."""
    ids = [f"m{i:04d}" for i in range(1_050)]
    for run_id in ids:
        await store.create_run(run_id=run_id, workflow="wf", input="[]", now=T0)
    leases = await store.claim(A, now=T0, lease_seconds=300, limit=2_000)
    for lease in leases[::100]:
        await park(store, lease, [asked(lease.run_id, "0", "refund", lease.run_id)])
    found = await indexed(store, ids)
    assert [r.run_id for r in found] == ids[::100]
    assert found == await full_scan(store, ids)


async def test_a_changed_approval_event_is_refused(
        store: Store, store_location: tuple[str, str]) -> None:
    """An approval event changed behind the store's back fails its checksum there too."""
    await journals(store)
    backend, where = store_location
    if backend == "memory":
        assert isinstance(store, MemoryStore)
        run = store._runs["r1"]
        last = run.events[-1]
        run.events[-1] = dataclasses.replace(last, payload=(last.payload or "").replace(
            "30", "3000"))
    else:
        sql = ("UPDATE {t} SET payload = replace(payload, '30', '3000') "
               "WHERE run_id = 'r1' AND kind = 'signal_wait_started'")
        if backend == "sqlite":
            with sqlite3.connect(where) as conn:
                conn.execute(sql.format(t="events"))
            conn.close()
        else:
            import psycopg

            with psycopg.connect(where, autocommit=True) as pg:
                pg.execute(sql.format(t="stalwart_events"))
    with pytest.raises(StoreCorruptedError, match=r"run r1, event \d+"):
        await store.approval_journals(["r2", "r1"])


async def test_sqlite_reads_through_its_partial_index(tmp_path: Path) -> None:
    """SQLite's query plan searches the partial index, not every event of the runs."""
    from stalwart.store import SQLiteStore
    from stalwart.store._approvals import select_events_sql

    store = SQLiteStore(str(tmp_path / "j.db"))
    await store.open()
    await journals(store)
    await store.close()
    sql = select_events_sql(events="events", blobs="blobs", run_ids="IN (?, ?)",
                            indexed="INDEXED BY events_approvals")
    with sqlite3.connect(tmp_path / "j.db") as conn:
        plan = " | ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}",
                                                      ("r1", "r2")))
    conn.close()
    assert "SEARCH e USING INDEX events_approvals (run_id=?)" in plan


async def test_postgres_can_read_through_its_partial_index(pg_url: str) -> None:
    """PostgreSQL matches the query to the partial index (its predicate is the
    query's): with sequential scans off, the plan uses it."""
    import psycopg

    from stalwart.store._approvals import select_events_sql
    from stalwart.store._postgres import PostgresStore

    store = PostgresStore(pg_url)
    await store.open()
    await journals(store)
    await store.close()
    sql = select_events_sql(events="stalwart_events", blobs="stalwart_blobs",
                            run_ids="= ANY(%s)")
    with psycopg.connect(pg_url, autocommit=True) as pg:
        pg.execute("SET enable_seqscan = off")
        plan = " | ".join(r[0] for r in pg.execute(f"EXPLAIN {sql}", (["r1", "r2"],)))
    assert "stalwart_events_approvals" in plan, plan


def test_the_whole_journal_counts_only_approval_events() -> None:
    """find_requests applies the index's rule: a signal received at an approval's step
    under another name (no decision's) decides nothing, in a whole journal too."""
    from stalwart.engine._approval import find_requests
    from stalwart.store import Event

    request = asked("r", "0", "refund", 1)
    events = [Event("r", 1, request.kind, "0", request.name, request.payload, T0),
              Event("r", 2, EventKind.SIGNAL_RECEIVED, "0", "go", decision(True), T0)]
    [req] = find_requests("r", events)
    assert req.pending

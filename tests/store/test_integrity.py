"""Checksums in every store: a journal changed behind the store's back is refused.

Each test damages a journal the way only something outside stalwart can (SQL on the
file or database, the in-memory store's internals) and checks that reading it raises
StoreCorruptedError naming the run and the event, on SQLite, PostgreSQL and the
in-memory store alike (one rule: ``stalwart.store._chain``).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

import pytest

from stalwart.errors import StoreCorruptedError
from stalwart.store import EventKind, Finish, NewEvent, Owner, RunStatus, Store
from stalwart.testing import MemoryStore

A = Owner(id="worker-a", host="host-a", pid=101)
T0 = 1_000.0


def step(step_id: str, payload: str) -> NewEvent:
    return NewEvent(EventKind.STEP_COMPLETED, step_id=step_id, name="f", payload=payload)


async def journal(store: Store) -> None:
    """Run ``r``: created, claimed, three steps (events 3-5), completed (event 6)."""
    await store.create_run(run_id="r", workflow="wf", input='["in"]', now=T0)
    [lease] = await store.claim(A, now=T0, lease_seconds=30, limit=1)
    await store.append(lease, [step("0", '"a"'), step("1", '"b"')], now=T0 + 1)
    await store.append(lease, [step("2", '"c"'), NewEvent(EventKind.RUN_COMPLETED,
                                                         payload='"done"')],
                       now=T0 + 2, finish=Finish(RunStatus.COMPLETED, result='"done"'))


def tamper(location: tuple[str, str], store: Store, sqlite_sql: str,
           memory: Any) -> None:
    """Apply ``sqlite_sql`` (table names without PostgreSQL's ``stalwart_`` prefix) to
    the journal behind the store's back, or ``memory(store)`` to an in-memory one."""
    backend, where = location
    if backend == "memory":
        assert isinstance(store, MemoryStore)
        memory(store)
    elif backend == "sqlite":
        with sqlite3.connect(where) as conn:
            conn.execute(sqlite_sql)
        conn.close()
    else:
        import psycopg

        pg_sql = sqlite_sql.replace("UPDATE events", "UPDATE stalwart_events").replace(
            "FROM events", "FROM stalwart_events").replace("UPDATE runs", "UPDATE stalwart_runs")
        with psycopg.connect(where, autocommit=True) as conn:
            conn.execute(pg_sql)


def _event(store: MemoryStore, seq: int, **changes: Any) -> None:
    run = store._runs["r"]
    run.events[seq - 1] = dataclasses.replace(run.events[seq - 1], **changes)


async def test_a_changed_payload_is_refused_naming_run_and_event(
        store: Store, store_location: tuple[str, str]) -> None:
    """One event's payload changed: load_events raises StoreCorruptedError at that event."""
    await journal(store)
    assert [e.payload for e in await store.load_events("r")][2:5] == ['"a"', '"b"', '"c"']
    tamper(store_location, store, "UPDATE events SET payload = '\"B\"' WHERE seq = 4",
           lambda s: _event(s, 4, payload='"B"'))
    with pytest.raises(StoreCorruptedError, match=r"run r, event 4") as info:
        await store.load_events("r")
    assert info.value.run_id == "r"


async def test_a_deleted_event_is_refused(store: Store,
                                          store_location: tuple[str, str]) -> None:
    """An event removed from the middle: the chain breaks where it was."""
    await journal(store)
    tamper(store_location, store, "DELETE FROM events WHERE seq = 3",
           lambda s: s._runs["r"].events.pop(2))
    with pytest.raises(StoreCorruptedError, match=r"event 3"):
        await store.load_events("r")


async def test_a_lost_tail_is_refused(store: Store, store_location: tuple[str, str]) -> None:
    """The last events gone (as a torn write would lose them): the count says so."""
    await journal(store)

    def drop(s: MemoryStore) -> None:
        del s._runs["r"].events[4:]

    tamper(store_location, store, "DELETE FROM events WHERE seq >= 5", drop)
    with pytest.raises(StoreCorruptedError, match=r"has 6 events but 4"):
        await store.load_events("r")


async def test_swapped_payloads_are_refused(store: Store,
                                            store_location: tuple[str, str]) -> None:
    """Two events' payloads exchanged (each still a valid value): caught."""
    await journal(store)

    def swap(s: MemoryStore) -> None:
        _event(s, 3, payload='"b"')
        _event(s, 4, payload='"a"')

    tamper(store_location, store, "UPDATE events SET payload = CASE seq WHEN 3 THEN '\"b\"' "
           "ELSE '\"a\"' END WHERE seq IN (3, 4)", swap)
    with pytest.raises(StoreCorruptedError, match=r"event 3"):
        await store.load_events("r")


async def test_a_changed_result_or_input_is_refused(
        store: Store, store_location: tuple[str, str]) -> None:
    """The run row's result (or input) changed: get_run raises StoreCorruptedError."""
    if store_location[0] == "memory":
        pytest.skip("the in-memory store keeps records, not rows: nothing to damage")
    await journal(store)
    assert (await store.get_run("r")).result == '"done"'  # type: ignore[union-attr]
    tamper(store_location, store, "UPDATE runs SET result = '\"dome\"'", None)
    with pytest.raises(StoreCorruptedError, match=r"run r.*result"):
        await store.get_run("r")
    tamper(store_location, store, "UPDATE runs SET result = '\"done\"', input = '[\"im\"]'",
           None)
    with pytest.raises(StoreCorruptedError, match=r"run r.*input"):
        await store.list_runs()


async def test_every_write_path_keeps_the_chain(store: Store) -> None:
    """Creation with events, claims, appends, signals, cancels and redrives all chain
    their events: every run's journal verifies afterwards."""
    await store.create_run(run_id="fork", workflow="wf", input="[]", now=T0,
                           events=[step("0", "1"), step("1", "2")])
    [lease] = await store.claim(A, now=T0, lease_seconds=30, limit=1, run_id="fork")
    await store.send_signal("fork", "go", "7", now=T0)
    assert await store.take_signal(lease, "go", "2", now=T0 + 1) == "7"
    await store.create_run(run_id="child", workflow="wf", input="[]", now=T0 + 1,
                           parent=lease, parent_step_id="3",
                           parent_events=[NewEvent(EventKind.CHILD_STARTED, step_id="3",
                                                   name="child:wf", payload='"child"')])
    await store.append(lease, [NewEvent(EventKind.RUN_DEAD_LETTERED, step_id="2")],
                       now=T0 + 2, finish=Finish(RunStatus.DEAD_LETTERED, error="e"))
    await store.redrive("fork", now=T0 + 3)
    await store.request_cancel("child", now=T0 + 4)
    kinds = {rid: [e.kind for e in await store.load_events(rid)] for rid in ("fork", "child")}
    assert kinds["fork"][-1] == EventKind.RUN_REDRIVEN
    assert kinds["child"] == [EventKind.RUN_CREATED, EventKind.RUN_CANCELLED]
    assert (await store.get_run("fork")).error is None  # type: ignore[union-attr]

"""Large payloads stored once, by content (``stalwart.store._blobs``), in every store.

A payload over the threshold is kept once in the blobs table however many events, runs
and forks journal it; events read back exactly as written; a blob changed or lost
behind the store's back is a StoreCorruptedError naming the run and the event; the hash
chain still covers the payload itself; a journal of the schema before blobs migrates
and reads back identically.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from stalwart.errors import LeaseLostError, SchemaVersionError, StoreCorruptedError
from stalwart.store import EventKind, NewEvent, Owner, SQLiteStore, Store
from stalwart.store._blobs import BLOB_THRESHOLD, blob_key, resolve, split
from stalwart.store._chain import GENESIS, event_digest

from .conftest import StoreFactory

A = Owner(id="worker-a", host="host-a", pid=101)
T0 = 1_000.0
BIG = '"' + "a document read by many runs; " * 400 + '"'  # ~12,000 chars
OTHER = '"' + "another large tool result " * 300 + '"'


def step(step_id: str, payload: str) -> NewEvent:
    return NewEvent(EventKind.STEP_COMPLETED, step_id=step_id, name="f", payload=payload)


def sql(location: tuple[str, str], statement: str) -> list[tuple[Any, ...]]:
    """Run ``statement`` (SQLite's table names) on the journal behind the store's back."""
    backend, where = location
    if backend == "sqlite":
        conn = sqlite3.connect(where)
        try:
            with conn:
                return conn.execute(statement).fetchall()
        finally:
            conn.close()
    import psycopg

    statement = (statement.replace(" blobs", " stalwart_blobs")
                 .replace(" events", " stalwart_events"))
    with psycopg.connect(where, autocommit=True) as pg:
        cur = pg.execute(statement)
        return cur.fetchall() if cur.description else []


async def run_with(store: Store, run_id: str, payloads: list[str]) -> None:
    """A run that records one step per payload."""
    await store.create_run(run_id=run_id, workflow="wf", input="[]", now=T0)
    [lease] = await store.claim(A, now=T0, lease_seconds=30, limit=1, run_id=run_id)
    await store.append(lease, [step(str(i), p) for i, p in enumerate(payloads)], now=T0 + 1)


async def fork_of(store: Store, origin: str, run_id: str) -> None:
    """What ``fork_run`` writes: a new run whose journal copies the origin's steps."""
    copied = [NewEvent(e.kind, e.step_id, e.name, e.payload)
              for e in await store.load_events(origin) if e.kind == EventKind.STEP_COMPLETED]
    await store.create_run(run_id=run_id, workflow="wf", input="[]", now=T0 + 2,
                           events=[NewEvent(EventKind.RUN_FORKED, payload="{}"), *copied])


def sql_only(location: tuple[str, str]) -> None:
    if location[0] == "memory":
        pytest.skip("the in-memory store keeps payloads inline: no blobs table")


# -- the pure rule -------------------------------------------------------------------


def test_split_keeps_small_payloads_inline_and_each_large_one_once() -> None:
    at_limit = "x" * BLOB_THRESHOLD
    over = "y" * (BLOB_THRESHOLD + 1)
    rows = [("r", 1, "k", None, None, at_limit, 1.0, "d1"),
            ("r", 2, "k", None, None, over, 1.0, "d2"),
            ("r", 3, "k", None, None, over, 1.0, "d3"),
            ("r", 4, "k", None, None, None, 1.0, "d4")]
    out, blobs = split(rows)
    assert [(r[5], r[8]) for r in out] == [(at_limit, None), (None, blob_key(over)),
                                           (None, blob_key(over)), (None, None)]
    assert blobs == [(blob_key(over), over)]
    read = [(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], over if r[8] else None)
            for r in out]
    assert [r[4] for r in resolve("r", read)] == [at_limit, over, over, None]


def test_resolve_refuses_a_missing_or_changed_blob() -> None:
    ref = blob_key("text")
    with pytest.raises(StoreCorruptedError, match=r"run r, event 2.*missing"):
        resolve("r", [(2, "k", None, None, None, 1.0, "d", ref, None)])
    with pytest.raises(StoreCorruptedError, match=r"run r, event 2.*does not match"):
        resolve("r", [(2, "k", None, None, None, 1.0, "d", ref, "texT")])


# -- every store ---------------------------------------------------------------------


async def test_a_large_payload_is_stored_once_across_runs_and_forks(
        store: Store, store_location: tuple[str, str]) -> None:
    """Two runs and a fork journal the same document five times: one blob row; every
    event reads back as written."""
    await run_with(store, "r1", [BIG, '"small"', BIG])
    await run_with(store, "r2", [BIG, OTHER])
    await fork_of(store, "r1", "r1.fork")
    assert [e.payload for e in await store.load_events("r1")][2:] == [BIG, '"small"', BIG]
    assert [e.payload for e in await store.load_events("r2")][2:] == [BIG, OTHER]
    assert [e.payload for e in await store.load_events("r1.fork")][2:] == [
        BIG, '"small"', BIG]
    if store_location[0] == "memory":
        return
    assert sorted(sql(store_location, "SELECT hash, LENGTH(content) FROM blobs")) == sorted(
        [(blob_key(BIG), len(BIG)), (blob_key(OTHER), len(OTHER))])
    [(inline, refs)] = sql(store_location, "SELECT COALESCE(SUM(LENGTH(payload)), 0), "
                           "COUNT(payload_ref) FROM events")
    assert refs == 6 and inline < 1_000  # the events hold references, not the documents


async def test_the_chain_covers_the_payload_not_the_reference(
        store: Store, store_location: tuple[str, str]) -> None:
    """Each stored digest is the one of the event with its payload inline; a reference
    pointed at another sound blob breaks the chain at that event."""
    await run_with(store, "r", [BIG, OTHER])
    prev = GENESIS
    for ev in await store.load_events("r"):
        prev = event_digest(prev, "r", ev.seq, ev.kind, ev.step_id, ev.name, ev.payload,
                            ev.created_at)
    sql_only(store_location)
    assert sql(store_location, "SELECT digest FROM events WHERE seq = 4") == [(prev,)]
    sql(store_location, f"UPDATE events SET payload_ref = '{blob_key(OTHER)}' WHERE seq = 3")
    with pytest.raises(StoreCorruptedError, match=r"run r, event 3.*checksum"):
        await store.load_events("r")


async def test_a_changed_blob_is_refused_naming_run_and_event(
        store: Store, store_location: tuple[str, str]) -> None:
    sql_only(store_location)
    await run_with(store, "r", ['"small"', BIG])
    sql(store_location, "UPDATE blobs SET content = replace(content, 'many', 'few')")
    with pytest.raises(StoreCorruptedError, match=r"run r, event 4.*blob .* does not match"
                       ) as info:
        await store.load_events("r")
    assert info.value.run_id == "r"


async def test_a_missing_blob_is_refused_naming_run_and_event(
        store: Store, store_location: tuple[str, str]) -> None:
    sql_only(store_location)
    await run_with(store, "r", [BIG])
    sql(store_location, "DELETE FROM blobs")
    with pytest.raises(StoreCorruptedError, match=r"run r, event 3.*blob .* is missing"):
        await store.load_events("r")


async def test_a_blob_is_written_with_its_event_or_not_at_all(
        store: Store, store_location: tuple[str, str], open_another: StoreFactory) -> None:
    """An append fenced out (a stale lease) leaves no blob behind, also where the store
    writes conditionally from the row it remembers (PostgreSQL's batched appends)."""
    sql_only(store_location)
    await store.create_run(run_id="r", workflow="wf", input="[]", now=T0)
    [lease] = await store.claim(A, now=T0, lease_seconds=30, limit=1)
    await store.append(lease, [step("0", '"small"')], now=T0 + 1)  # remembered
    other = await open_another()  # the lease expired: another worker took the run
    await other.claim(Owner(id="worker-b", host="host-b", pid=102), now=T0 + 60,
                      lease_seconds=30, limit=1)
    with pytest.raises(LeaseLostError):
        await store.append(lease, [step("1", BIG)], now=T0 + 61)
    assert sql(store_location, "SELECT COUNT(*) FROM blobs") == [(0,)]


# -- a journal of the schema before blobs -------------------------------------------


def inline_blobs(statement: Any) -> None:
    """Put every blob back into its events and drop blobs' column and table (what a
    stalwart of the previous schema wrote), through ``statement``."""
    statement("UPDATE events SET payload = (SELECT content FROM blobs "
              "WHERE blobs.hash = events.payload_ref) WHERE payload_ref IS NOT NULL")
    statement("ALTER TABLE events DROP COLUMN payload_ref")
    statement("DROP TABLE blobs")


async def test_an_sqlite_journal_of_schema_3_migrates_and_reads_identically(
        tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    store = SQLiteStore(path)
    await store.open()
    await run_with(store, "old", [BIG, '"small"'])
    before = await store.load_events("old")
    await store.close()
    conn = sqlite3.connect(path)
    with conn:
        inline_blobs(conn.execute)
        conn.execute("UPDATE stalwart_meta SET value = '3' WHERE key = 'schema_version'")
    conn.close()
    reader = SQLiteStore(path, access="read")
    with pytest.raises(SchemaVersionError, match="migrates it"):
        await reader.open()
    await reader.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.load_events("old") == before
        await run_with(store, "new", [BIG])
        assert (await store.load_events("new"))[2].payload == BIG
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM stalwart_meta WHERE key = 'schema_version'"
                            ).fetchone() == ("4",)
        assert conn.execute("SELECT COUNT(*) FROM blobs").fetchone() == (1,)
        assert conn.execute("SELECT COUNT(*) FROM events WHERE run_id = 'old' AND "
                            "payload_ref IS NOT NULL").fetchone() == (0,)  # left inline
    finally:
        conn.close()


async def test_a_postgres_journal_of_schema_4_migrates_and_reads_identically(
        pg_url: str) -> None:
    import psycopg

    from stalwart.store._postgres import PostgresStore

    store = PostgresStore(pg_url)
    await store.open()
    await run_with(store, "old", [BIG, '"small"'])
    before = await store.load_events("old")
    await store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        def execute(statement: str) -> None:
            conn.execute(statement.replace(" blobs", " stalwart_blobs")
                         .replace(" events", " stalwart_events"))

        inline_blobs(execute)
        conn.execute("UPDATE stalwart_meta SET value = '4' WHERE key = 'schema_version'")
    reader = PostgresStore(pg_url, access="read")
    with pytest.raises(SchemaVersionError, match="migrates it"):
        await reader.open()
    await reader.close()
    store = PostgresStore(pg_url)
    await store.open()
    try:
        assert await store.load_events("old") == before
        await run_with(store, "new", [BIG])
        assert (await store.load_events("new"))[2].payload == BIG
    finally:
        await store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM stalwart_meta WHERE key = 'schema_version'"
                            ).fetchall() == [("5",)]
        assert conn.execute("SELECT COUNT(*) FROM stalwart_blobs").fetchall() == [(1,)]

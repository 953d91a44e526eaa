"""What only PostgresStore does: schema ownership, errors, LISTEN/NOTIFY, group commit.

The shared semantics are in ``test_conformance.py``; these need a server too
(``STALWART_TEST_POSTGRES_URL``) and are skipped without one.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest

from stalwart._clock import SystemClock
from stalwart._runtime import open_store
from stalwart.engine._store_retry import transient_retry
from stalwart.errors import (
    ConfigurationError,
    NotAStalwartStoreError,
    SchemaVersionError,
    StoreError,
)
from stalwart.store import EventKind, Finish, NewEvent, Owner, RunStatus

psycopg = pytest.importorskip("psycopg")
from stalwart.store._pg_conninfo import printable_url  # noqa: E402
from stalwart.store._postgres import PostgresStore  # noqa: E402
from stalwart.store._postgres_schema import SCHEMA_VERSION  # noqa: E402

OWNER = Owner(id="w", host="h", pid=1)


def with_option(url: str, option: str) -> str:
    """``url`` with one more ``-c`` server option in its ``options`` parameter."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["options"] = f"{query.get('options', '')} {option}".strip()
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def sql(url: str, statement: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def snapshot(url: str) -> list[tuple[object, ...]]:
    """Every table of the test schema with its columns and row count."""
    tables = sql(url, "SELECT table_name FROM information_schema.tables "
                      "WHERE table_schema = current_schema() ORDER BY 1")
    out = []
    for (table,) in tables:
        cols = sql(url, "SELECT column_name FROM information_schema.columns WHERE "
                        f"table_schema = current_schema() AND table_name = '{table}' ORDER BY 1")
        rows = sql(url, f'SELECT * FROM "{table}" ORDER BY 1')
        out.append((table, tuple(c for (c,) in cols), tuple(rows)))
    return out


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(pg_url)
    await store.open()
    yield store
    await store.close()


async def refused(url: str, error: type[StoreError]) -> StoreError:
    """Opening ``url`` raises ``error`` and leaves every table as it was."""
    before = snapshot(url)
    store = PostgresStore(url)
    with pytest.raises(error) as info:
        await store.open()
    assert snapshot(url) == before
    await store.close()
    return info.value


async def test_open_creates_the_schema_once_for_racing_workers(pg_url: str) -> None:
    """Workers opening an empty schema together create the tables once, then share them."""
    stores = [PostgresStore(pg_url) for _ in range(5)]
    await asyncio.gather(*(s.open() for s in stores))
    await stores[0].create_run(run_id="r", workflow="wf", input="[]", now=1.0)
    assert [(await s.get_run("r")) is not None for s in stores] == [True] * 5
    assert sql(pg_url, "SELECT key, value FROM stalwart_meta ORDER BY key") == [
        ("app", "stalwart"), ("schema_version", str(SCHEMA_VERSION))]
    for s in stores:
        await s.close()


@pytest.mark.parametrize("found", [SCHEMA_VERSION + 1, 0])  # 0: no migration from it
async def test_a_journal_of_an_unsupported_schema_version_is_refused(
        pg: PostgresStore, pg_url: str, found: int) -> None:
    """A newer schema (or an older one with no migration) raises SchemaVersionError."""
    await pg.close()
    sql(pg_url, f"UPDATE stalwart_meta SET value = '{found}' WHERE key = 'schema_version'")
    err = await refused(pg_url, SchemaVersionError)
    assert isinstance(err, SchemaVersionError)
    assert (err.found, err.expected) == (found, SCHEMA_VERSION)
    assert ("newer" if found > SCHEMA_VERSION else "older") in str(err)


async def test_an_older_schema_is_migrated_on_open(
        pg: PostgresStore, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Open applies the migrations from the journal's version and records the new one."""
    from stalwart.store import _postgres_schema

    await pg.close()
    sql(pg_url, f"UPDATE stalwart_meta SET value = '{SCHEMA_VERSION - 1}' "
                "WHERE key = 'schema_version'")
    monkeypatch.setitem(_postgres_schema.MIGRATIONS, SCHEMA_VERSION - 1,
                        ("CREATE TABLE migrated_marker (x INT)",))
    store = PostgresStore(pg_url)
    await store.open()
    await store.close()
    assert sql(pg_url, "SELECT value FROM stalwart_meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)]
    assert sql(pg_url, "SELECT count(*) FROM migrated_marker") == [(0,)]


async def test_foreign_tables_with_stalwart_names_are_refused(pg_url: str) -> None:
    """Tables named like ours but not a journal raise NotAStalwartStoreError, untouched."""
    sql(pg_url, "CREATE TABLE stalwart_runs (id SERIAL PRIMARY KEY, note TEXT)")
    sql(pg_url, "INSERT INTO stalwart_runs (note) VALUES ('mine')")
    await refused(pg_url, NotAStalwartStoreError)
    sql(pg_url, "CREATE TABLE stalwart_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    sql(pg_url, "INSERT INTO stalwart_meta VALUES ('app', 'someone-else')")
    await refused(pg_url, NotAStalwartStoreError)


async def test_a_journal_missing_its_columns_is_refused(pg: PostgresStore,
                                                        pg_url: str) -> None:
    """Our meta table with a run table of another shape is refused, untouched."""
    await pg.close()
    sql(pg_url, "ALTER TABLE stalwart_runs DROP COLUMN wake_requested")
    await refused(pg_url, NotAStalwartStoreError)


async def test_an_unreachable_server_is_a_retryable_store_error() -> None:
    """A connection failure raises StoreError(retryable=True), without the password."""
    store = PostgresStore("postgresql://u:secret@127.0.0.1:1/db", connect_timeout=2)
    with pytest.raises(StoreError) as info:
        await store.open()
    assert info.value.retryable
    assert "secret" not in str(info.value)
    with pytest.raises(StoreError, match="not open"):
        await store.get_run("x")


async def test_a_dropped_connection_is_a_retryable_error_then_recovers(pg_url: str) -> None:
    """When the server kills the pool's connection, the next call fails retryably and the
    one after succeeds on a fresh connection."""
    app = f"stalwart-test-{uuid.uuid4().hex[:8]}"
    store = PostgresStore(f"{pg_url}&application_name={app}")
    await store.open()
    await store.create_run(run_id="r", workflow="wf", input="[]", now=1.0)
    # The run's NOTIFY goes out in a task of its own after the commit: let it finish,
    # or it may meet the killed connection first and the pool replace it (with the same
    # application name: waiting for that name to vanish then never ended, in CI).
    await store._notifier.idle()
    pids = [p for (p,) in sql(pg_url, f"SELECT pid FROM pg_stat_activity "
                                      f"WHERE application_name = '{app}'")]
    assert pids
    gone = ", ".join(str(p) for p in pids)
    sql(pg_url, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN ({gone})")
    while sql(pg_url, f"SELECT 1 FROM pg_stat_activity WHERE pid IN ({gone})"):
        await asyncio.sleep(0.01)
    with pytest.raises(StoreError) as info:
        await store.get_run("r")
    assert info.value.retryable
    assert await store.get_run("r") is not None
    await store.close()


async def test_wait_for_notification_wakes_on_new_runs_signals_and_finishes(
        pg: PostgresStore, pg_url: str) -> None:
    """Another process's new run, signal, or finished execution wakes a waiting scheduler."""
    other = PostgresStore(pg_url)
    await other.open()
    assert await pg.wait_for_notification(0.05) is False
    await pg.listening()

    async def woken_by(action: object) -> bool:
        waiter = asyncio.create_task(pg.wait_for_notification(5.0))
        await asyncio.sleep(0)
        await action  # type: ignore[misc]
        return await waiter

    assert await woken_by(other.create_run(run_id="r", workflow="wf", input="[]", now=1.0))
    [lease] = await other.claim(OWNER, now=2.0, lease_seconds=30, limit=1)
    assert await pg.wait_for_notification(0.05) is False
    assert await woken_by(other.send_signal("r", "go", "1", now=3.0))
    assert await woken_by(other.append(lease, [], now=4.0, finish=Finish(RunStatus.PENDING)))
    assert await pg.wait_for_notification(0.05) is False
    await other.close()


async def test_concurrent_appends_are_group_committed(pg: PostgresStore) -> None:
    """Concurrent appends share transactions: fewer commits than appends."""
    for i in range(40):
        await pg.create_run(run_id=f"r{i}", workflow="wf", input="[]", now=float(i))
    leases = await pg.claim(OWNER, now=100.0, lease_seconds=30, limit=40)
    before = pg.commits
    await asyncio.gather(*(
        pg.append(x, [NewEvent(EventKind.STEP_COMPLETED, "0", "f", "1")], now=101.0)
        for x in leases))
    assert pg.commits - before < len(leases)
    for x in leases:
        assert len(await pg.load_events(x.run_id)) == 3


async def _deadlocked_finish(store: PostgresStore, pg_url: str) -> asyncio.Task[object]:
    """A child's finish (which locks the child's row, then wakes the parent's) made a
    deadlock victim: another session holds the parent's row, waits until the finish
    waits for it, then asks for the child's. Returns the finish's task, done."""
    await store.open()
    parent = (await store.claim(OWNER, now=1.0, lease_seconds=30, limit=1)
              if await store.create_run(run_id="p", workflow="wf", input="[]", now=1.0)
              else [])[0]
    await store.create_run(run_id="c", workflow="wf", input="[]", now=2.0, parent=parent,
                           parent_step_id="0")
    [child] = await store.claim(OWNER, now=3.0, lease_seconds=30, limit=1, run_id="c")
    async with await psycopg.AsyncConnection.connect(
            with_option(pg_url, "-cdeadlock_timeout=5s")) as raw:
        await raw.execute("SELECT 1 FROM stalwart_runs WHERE run_id = 'p' FOR UPDATE")
        finishing: asyncio.Task[object] = asyncio.create_task(store.append(
            child, [], now=4.0, finish=Finish(RunStatus.COMPLETED, result="1")))
        # The append holds the child's row and waits for the parent's. Seen waiting in
        # pg_locks, not assumed after a sleep: PostgreSQL checks for a deadlock once, a
        # deadlock_timeout into a wait, so the append must wait before `raw` does.
        for _ in range(200):
            waiting = await (await raw.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted "
                "AND pid <> pg_backend_pid()")).fetchone()
            if waiting is not None and waiting[0]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the append never waited for the parent's row")
        await raw.execute("SELECT 1 FROM stalwart_runs WHERE run_id = 'c' FOR UPDATE")
        await raw.rollback()
    await asyncio.wait([finishing], timeout=10)
    assert finishing.done()
    return finishing


async def test_a_deadlocked_append_is_retried_as_the_retry_policy_says(pg_url: str) -> None:
    """An append chosen as a deadlock victim is retried after the store's retry (the
    Retry decision core a Runtime gives it) agreed, and lands; no error surfaces."""
    asked: list[int] = []
    policy = transient_retry(SystemClock(), random.Random(0))

    async def retry(attempt: int, error: BaseException) -> bool:
        asked.append(attempt)
        return await policy(attempt, error)

    store = PostgresStore(with_option(pg_url, "-cdeadlock_timeout=1s"), retry=retry)
    try:
        finishing = await _deadlocked_finish(store, pg_url)
        assert finishing.exception() is None
        child_rec = await store.get_run("c")
        assert child_rec is not None
        assert child_rec.status == RunStatus.COMPLETED
        assert asked == [1]
    finally:
        await store.close()


async def test_without_a_retry_a_deadlock_reaches_the_caller_as_retryable(
        pg_url: str) -> None:
    """retry=None: the deadlock is a retryable StoreError, and nothing was written."""
    store = PostgresStore(with_option(pg_url, "-cdeadlock_timeout=1s"), retry=None)
    try:
        finishing = await _deadlocked_finish(store, pg_url)
        error = finishing.exception()
        assert isinstance(error, StoreError) and error.retryable
        assert "deadlock" in str(error)
        child_rec = await store.get_run("c")
        assert child_rec is not None and child_rec.status == RunStatus.RUNNING
    finally:
        await store.close()


def test_the_url_hides_the_password_and_open_store_picks_postgres() -> None:
    """url never shows a password; open_store maps postgresql:// URLs to PostgresStore."""
    assert printable_url("postgresql://me:pw@db:5432/x?password=pw&sslmode=require") == (
        "postgresql://me@db:5432/x?sslmode=require")
    store = open_store("postgresql://me:pw@db/x")
    assert isinstance(store, PostgresStore)
    assert store.url == "postgresql://me@db/x"
    with pytest.raises(ConfigurationError):
        PostgresStore("postgresql://db/x", min_connections=5, max_connections=2)


# -- who creates the journal, and where -------------------------------------------------


async def test_a_reader_creates_nothing_and_says_there_is_no_journal(pg_url: str) -> None:
    """A read-only store on an empty schema, or one with an application's tables, raises
    NotAStalwartStoreError and creates, locks and writes nothing."""
    for setup in ((), ("CREATE TABLE customers (id INT)", "CREATE TABLE orders (id INT)")):
        for stmt in setup:
            sql(pg_url, stmt)
        before = snapshot(pg_url)
        for access in ("read", "client"):
            store = PostgresStore(pg_url, access=access)  # type: ignore[arg-type]
            if access == "client":  # a client opens, and finds nothing at its first read
                await store.open()
            with pytest.raises(NotAStalwartStoreError, match="no stalwart journal"):
                await (store.list_runs() if access == "client" else store.open())
            await store.close()
        assert snapshot(pg_url) == before


async def test_a_writer_refuses_a_schema_holding_other_tables(pg_url: str) -> None:
    """A worker never creates the journal beside an application's tables — unless told
    to (create=True)."""
    sql(pg_url, "CREATE TABLE customers (id INT)")
    sql(pg_url, "CREATE VIEW vip AS SELECT * FROM customers")
    err = await refused(pg_url, NotAStalwartStoreError)
    assert "customers, vip" in str(err) and "--create" in str(err)
    client = PostgresStore(pg_url, access="client")
    await client.open()
    with pytest.raises(NotAStalwartStoreError, match="customers"):
        await client.create_run(run_id="r", workflow="wf", input="[]", now=1.0)
    await client.close()
    told = PostgresStore(pg_url, create=True)
    await told.open()
    await told.create_run(run_id="r", workflow="wf", input="[]", now=1.0)
    await told.close()
    assert sql(pg_url, "SELECT count(*) FROM customers") == [(0,)]


async def test_a_client_creates_the_journal_at_its_first_write(pg_url: str) -> None:
    """Runtime(worker=False)'s store reads read-only; starting a run in an empty schema
    creates the journal."""
    client = PostgresStore(pg_url, access="client")
    await client.open()
    assert snapshot(pg_url) == []
    await client.create_run(run_id="r", workflow="wf", input="[]", now=1.0)
    assert (await client.get_run("r")) is not None
    await client.close()


async def test_a_reader_cannot_write(pg: PostgresStore, pg_url: str) -> None:
    """A read-only store refuses writes itself, and its sessions are read-only on the
    server too."""
    await pg.create_run(run_id="r", workflow="wf", input="[]", now=1.0)
    reader = PostgresStore(pg_url, access="read")
    await reader.open()
    try:
        assert (await reader.get_run("r")) is not None
        with pytest.raises(StoreError, match="read only"):
            await reader.send_signal("r", "go", "1", now=2.0)
        async with reader._connection() as conn:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                await conn.execute("DELETE FROM stalwart_runs")
    finally:
        await reader.close()


async def test_a_journal_of_schema_2_is_migrated_with_its_chains(pg: PostgresStore,
                                                                 pg_url: str) -> None:
    """A journal written before checksums (schema 2) is refused by readers and migrated
    by a writer, which hashes its events; they then verify."""
    await pg.create_run(run_id="r", workflow="wf", input="[1]", now=1.0)
    [lease] = await pg.claim(OWNER, now=2.0, lease_seconds=30, limit=1)
    await pg.append(lease, [NewEvent(EventKind.STEP_COMPLETED, "0", "f", "7")], now=3.0,
                    finish=Finish(RunStatus.COMPLETED, result="7"))
    await pg.close()
    sql(pg_url, "ALTER TABLE stalwart_runs DROP COLUMN event_head, DROP COLUMN run_digest, "
                "DROP COLUMN outcome_digest")
    sql(pg_url, "ALTER TABLE stalwart_events DROP COLUMN digest")
    sql(pg_url, "DROP TABLE stalwart_board_entries, stalwart_board_ops")  # schema 4's
    sql(pg_url, "ALTER TABLE stalwart_events DROP COLUMN payload_ref")  # schema 5's
    sql(pg_url, "DROP TABLE stalwart_blobs")
    sql(pg_url, "UPDATE stalwart_meta SET value = '2' WHERE key = 'schema_version'")
    before = snapshot(pg_url)
    reader = PostgresStore(pg_url, access="read")
    with pytest.raises(SchemaVersionError, match="migrates it"):
        await reader.open()
    await reader.close()
    assert snapshot(pg_url) == before
    writer = PostgresStore(pg_url)
    await writer.open()
    try:
        events = await writer.load_events("r")
        assert [e.kind for e in events] == ["run_created", "run_claimed", "step_completed"]
        assert (await writer.get_run("r")).result == "7"  # type: ignore[union-attr]
    finally:
        await writer.close()


async def test_a_journal_of_schema_3_gains_the_blackboard_tables(pg: PostgresStore,
                                                                pg_url: str) -> None:
    """A journal written before blackboards (schema 3) is refused by readers, untouched,
    and a writer adds the tables; its runs stay and a board works on it."""
    from stalwart.store._board import BoardOp
    from stalwart.store._postgres_schema import SCHEMA_VERSION

    await pg.create_run(run_id="r", workflow="wf", input="[1]", now=1.0)
    await pg.close()
    sql(pg_url, "DROP TABLE stalwart_board_entries, stalwart_board_ops")
    sql(pg_url, "ALTER TABLE stalwart_events DROP COLUMN payload_ref")  # schema 5's
    sql(pg_url, "DROP TABLE stalwart_blobs")
    sql(pg_url, "UPDATE stalwart_meta SET value = '3' WHERE key = 'schema_version'")
    before = snapshot(pg_url)
    reader = PostgresStore(pg_url, access="read")
    with pytest.raises(SchemaVersionError, match="migrates it"):
        await reader.open()
    await reader.close()
    assert snapshot(pg_url) == before
    writer = PostgresStore(pg_url)
    await writer.open()
    try:
        assert await writer.get_run("r") is not None
        entry = await writer.board_apply(BoardOp("post", "b", "r:1", key="k", value=1),
                                         now=2.0)
        assert entry is not None and entry.version == 1
    finally:
        await writer.close()
    assert sql(pg_url, "SELECT value FROM stalwart_meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)]


# -- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "needle"), [
    ("postgresql://127.0.0.1:54x32/postgres", "port '54x32'"),
    ("postgresql://127.0.0.1:99999/postgres", "port '99999'"),
    ("postgresql://127.0.0.1/postgres?sslmode=bogus", "sslmode='bogus'"),
    ("postgresql://127.0.0.1/postgres?connect_timeout=soon", "connect_timeout='soon'"),
    ("postgresql://127.0.0.1/postgres?target_session_attrs=any-old", "target_session_attrs"),
    ("postgresql://127.0.0.1/postgres?hostaddr=db.internal", "hostaddr"),
    ("postgresql://127.0.0.1/postgres?nonsense=1", "nonsense"),
    ("postgresql://%zz/postgres", "percent-encoded"),
    ("postgresql://u:secret@127.0.0.1:5x/postgres", "port '5x'"),
])
def test_a_malformed_url_is_a_configuration_error_before_connecting(url: str,
                                                                    needle: str) -> None:
    """Typos in a URL are ConfigurationErrors at once (never retried as an outage), and
    never show the password."""
    with pytest.raises(ConfigurationError, match="invalid PostgreSQL URL") as info:
        PostgresStore(url)
    assert needle in str(info.value)
    assert "secret" not in str(info.value)

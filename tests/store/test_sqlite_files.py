"""The SQLite journal's file handling: what it refuses to open, and where it lives.

A file that is not a journal this stalwart can use raises a typed error and is left
byte-for-byte as it was: stalwart never "repairs" or upgrades someone else's data.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from stalwart._runtime import open_store
from stalwart.errors import (
    NotAStalwartStoreError,
    SchemaVersionError,
    StoreCorruptedError,
    StoreError,
)
from stalwart.store import EventKind, NewEvent, Owner, SQLiteStore
from stalwart.store._base import SCHEMA_VERSION
from stalwart.store._runs import STATE_COLUMNS
from stalwart.store._sqlite import default_path
from stalwart.store._sqlite_rows import find

OWNER = Owner(id="w", host="h", pid=1)


async def make_journal(path: Path, runs: int = 1) -> None:
    """A closed journal at ``path`` holding ``runs`` runs with a few events each."""
    store = SQLiteStore(path)
    await store.open()
    try:
        for i in range(runs):
            await store.create_run(run_id=f"run-{i:04}", workflow="wf", input="x" * 200,
                                   now=float(i))
        for lease in await store.claim(OWNER, now=1e6, lease_seconds=60, limit=runs):
            await store.append(lease, [
                NewEvent(EventKind.STEP_COMPLETED, step_id=str(n), name="f", payload="y" * 300)
                for n in range(3)], now=1e6)
    finally:
        await store.close()


def set_meta(path: Path, key: str, value: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE stalwart_meta SET value = ? WHERE key = ?", (value, key))
    conn.close()


def wal_size(path: Path) -> int:
    """The size of ``path``'s WAL (0 when there is none)."""
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def contents(path: Path) -> bytes:
    return path.read_bytes()  # small files: blocking the test's event loop is harmless


async def refused(path: Path, error: type[StoreError], *,
                  access: str = "write") -> StoreError:
    """Opening ``path`` raises ``error``, the store stays closed and the bytes unchanged."""
    before = contents(path)
    store = SQLiteStore(path, access=access)  # type: ignore[arg-type]
    with pytest.raises(error) as info:
        await store.open()
    assert contents(path) == before
    with pytest.raises(StoreError, match="not open"):
        await store.get_run("x")
    await store.close()
    return info.value


async def test_a_new_file_and_its_folder_are_created(tmp_path: Path) -> None:
    """Opening a missing path creates the folder and a journal that opens again."""
    path = tmp_path / "deep" / "er" / "journal.db"
    await make_journal(path)
    store = SQLiteStore(path)
    await store.open()
    assert [r.run_id for r in await store.list_runs()] == ["run-0000"]
    await store.close()


async def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    """A non-SQLite file raises NotAStalwartStoreError and keeps its bytes."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"my precious notes\n" * 500)
    err = await refused(path, NotAStalwartStoreError)
    assert "not an SQLite file" in str(err)


async def test_a_directory_is_refused(tmp_path: Path) -> None:
    """A directory path raises NotAStalwartStoreError."""
    store = SQLiteStore(tmp_path)
    with pytest.raises(NotAStalwartStoreError):
        await store.open()


async def test_an_sqlite_database_of_another_app_is_refused_untouched(tmp_path: Path) -> None:
    """Another application's SQLite database raises NotAStalwartStoreError, unchanged."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, note TEXT)")
        conn.executemany("INSERT INTO runs (note) VALUES (?)", [("n",)] * 100)
    conn.close()
    await refused(path, NotAStalwartStoreError)


async def test_a_foreign_database_with_a_stalwart_meta_table_is_refused(
        tmp_path: Path) -> None:
    """A table merely named stalwart_meta does not make a database a journal."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE stalwart_meta (key TEXT, value TEXT)")
    conn.close()
    await refused(path, NotAStalwartStoreError)


@pytest.mark.parametrize("found", [SCHEMA_VERSION + 1, 0])  # 0: older than any migration
async def test_a_journal_of_another_schema_version_is_refused_untouched(
        tmp_path: Path, found: int) -> None:
    """A journal of a newer or unsupported older schema raises SchemaVersionError,
    saying which."""
    path = tmp_path / "journal.db"
    await make_journal(path)
    set_meta(path, "schema_version", str(found))
    err = await refused(path, SchemaVersionError)
    assert isinstance(err, SchemaVersionError)
    assert (err.found, err.expected) == (found, SCHEMA_VERSION)
    assert ("newer" if found > SCHEMA_VERSION else "older") in str(err)


async def read_everything(store: SQLiteStore) -> None:
    for rec in await store.list_runs(limit=10_000):
        await store.get_run(rec.run_id)
        await store.load_events(rec.run_id)


async def test_a_corrupted_journal_is_refused_untouched(tmp_path: Path) -> None:
    """Garbage in the middle of a journal: opening reads only what an open needs (the
    header, the schema, the WAL), so the damage is met where it is read — a reader that
    reads everything gets StoreCorruptedError — and a writer's background check finds it
    at once and refuses every operation. The file stays as it was."""
    path = tmp_path / "journal.db"
    await make_journal(path, runs=200)
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    middle = (len(data) // page // 2) * page
    data[middle:middle + 3 * page] = b"\xa5\x5a" * (3 * page // 2)
    path.write_bytes(bytes(data))
    before = contents(path)
    reader = SQLiteStore(path, access="read")
    await reader.open()
    try:
        with pytest.raises(StoreCorruptedError):
            await read_everything(reader)
    finally:
        await reader.close()
    writer = SQLiteStore(path)
    await writer.open()
    try:
        assert isinstance(await writer.verified(), StoreCorruptedError)
        with pytest.raises(StoreCorruptedError, match="damaged"):
            await writer.create_run(run_id="new", workflow="wf", input="[]", now=1.0)
        with pytest.raises(StoreCorruptedError, match="damaged"):
            await writer.get_run("run-0001")
    finally:
        await writer.close()
    assert contents(path) == before


def _omit_from_index(path: Path, index: str, definition: str) -> None:
    """Make ``index`` hold no entries while the schema says it indexes every row: an
    index that silently omits runs, as damage can leave one (integrity_check says
    "row N missing from index")."""
    with sqlite3.connect(path) as conn:
        conn.execute(f"DROP INDEX {index}")
        conn.execute(f"{definition} WHERE run_id = 'no such run'")
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("UPDATE sqlite_master SET sql = ? WHERE name = ?", (definition, index))
    conn.close()


async def test_an_index_that_omits_runs_stops_a_writer(tmp_path: Path) -> None:
    """The claim index omits every run: a claim would silently find no work. The
    writer's background integrity_check finds it, and the claim is refused with
    StoreCorruptedError instead."""
    path = tmp_path / "journal.db"
    store = SQLiteStore(path)
    await store.open()
    for i in range(3):
        await store.create_run(run_id=f"r{i}", workflow="wf", input="[]", now=float(i))
    await store.close()
    _omit_from_index(path, "runs_status", "CREATE INDEX runs_status ON runs (status, wake_at)")
    store = SQLiteStore(path)
    await store.open()
    try:
        damage = await store.verified()
        assert damage is not None and "runs_status" in str(damage)
        with pytest.raises(StoreCorruptedError, match="runs_status"):
            await store.claim(OWNER, now=10.0, lease_seconds=30, limit=10)
    finally:
        await store.close()


def _rename_in_index(path: Path, index: str, old: bytes, new: bytes) -> None:
    """Change one key of ``index`` in the file's bytes, as a flipped byte would."""
    with sqlite3.connect(path) as conn:
        pages = [r[0] for r in conn.execute("SELECT pageno FROM dbstat WHERE name = ?",
                                            (index,))]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    for pageno in pages:
        at = data.find(old, (pageno - 1) * size, pageno * size)
        if at >= 0:
            data[at:at + len(old)] = new
            path.write_bytes(bytes(data))
            return
    raise AssertionError(f"{old!r} is not in {index}")


async def test_a_damaged_id_index_is_damage_not_another_or_a_missing_run(
        tmp_path: Path) -> None:
    """The run table's id index says run-0002 where it meant run-0001: get_run of
    run-0001 must not say "no such run", get_run of run-0002 must not return run-0001's
    row (a reader, which runs no background check, finds both by the lookups' own
    checks), and a writer creates no second run-0001; each is StoreCorruptedError."""
    path = tmp_path / "journal.db"
    await make_journal(path, runs=3)
    _rename_in_index(path, "sqlite_autoindex_runs_1", b"run-0001", b"run-0002")
    reader = SQLiteStore(path, access="read")
    await reader.open()
    try:
        with pytest.raises(StoreCorruptedError, match="run run-0001"):
            await reader.get_run("run-0001")
        with pytest.raises(StoreCorruptedError, match="run run-0002"):
            await reader.get_run("run-0002")
        assert (await reader.get_run("run-0000")) is not None
    finally:
        await reader.close()
    conn = sqlite3.connect(path)  # the lookup every transition starts with
    try:
        for asked in ("run-0001", "run-0002"):
            with pytest.raises(StoreCorruptedError, match=f"run {asked}"):
                find(conn, STATE_COLUMNS, asked)
    finally:
        conn.close()
    writer = SQLiteStore(path)
    await writer.open()
    try:  # whichever finds it first: the lookup, or the background check
        with pytest.raises(StoreCorruptedError, match=r"run run-0001|missing from index"):
            await writer.create_run(run_id="run-0001", workflow="wf", input="[]", now=9.0)
    finally:
        await writer.close()


async def test_a_truncated_header_is_refused_untouched(tmp_path: Path) -> None:
    """A file holding only a prefix of a journal is refused, unchanged."""
    path = tmp_path / "journal.db"
    await make_journal(path)
    path.write_bytes(path.read_bytes()[:100])
    await refused(path, StoreError)


async def test_the_default_path_is_in_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $STALWART_STORE the journal is ./.stalwart/stalwart.db."""
    monkeypatch.delenv("STALWART_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_path() == Path(".stalwart") / "stalwart.db"
    store = open_store(None)
    assert isinstance(store, SQLiteStore)
    await store.open()
    await store.close()
    assert (tmp_path / ".stalwart" / "stalwart.db").is_file()


async def test_stalwart_store_env_var_names_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$STALWART_STORE set to a path is where the default store lives."""
    target = tmp_path / "elsewhere" / "j.db"
    monkeypatch.setenv("STALWART_STORE", os.fspath(target))
    monkeypatch.chdir(tmp_path)
    assert default_path() == target
    for store in (SQLiteStore(), open_store(None)):
        assert isinstance(store, SQLiteStore)
        assert store.path == os.fspath(target)
    store = SQLiteStore()
    await store.open()
    await store.close()
    assert target.is_file()
    assert not (tmp_path / ".stalwart").exists()


def test_a_url_in_stalwart_store_is_not_taken_for_a_file(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """$STALWART_STORE holding a URL leaves SQLite's default path alone."""
    monkeypatch.setenv("STALWART_STORE", "sqlite:///x.db")
    assert default_path() == Path(".stalwart") / "stalwart.db"
    store = open_store(None)
    assert isinstance(store, SQLiteStore)
    assert store.path == "x.db"


# -- who may initialise a file ---------------------------------------------------------


def _only_a_view(p: Path) -> None:
    with sqlite3.connect(p) as conn:
        conn.execute("CREATE VIEW answer AS SELECT 42 AS x")
    conn.close()


def _only_a_user_version(p: Path) -> None:
    with sqlite3.connect(p) as conn:
        conn.execute("PRAGMA user_version = 7")
    conn.close()


def _nothing_but_a_header(p: Path) -> None:
    with sqlite3.connect(p) as conn:
        conn.execute("VACUUM")  # writes page 1: a valid, empty SQLite file
    conn.close()


def _foreign_tables(p: Path) -> None:
    with sqlite3.connect(p) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.close()


@pytest.mark.parametrize("make", [_only_a_view, _only_a_user_version, _nothing_but_a_header,
                                  _foreign_tables],
                         ids=["view", "user-version", "empty-schema", "tables"])
@pytest.mark.parametrize("access", ["write", "client", "read"])
async def test_a_foreign_sqlite_file_is_never_initialised(
        tmp_path: Path, make: Any, access: str) -> None:
    """An SQLite file without our application_id — even one with no table — is refused
    by every kind of store (a client at its first write), byte for byte unchanged."""
    path = tmp_path / "theirs.db"
    make(path)
    assert path.stat().st_size > 0
    before = contents(path)
    store = SQLiteStore(path, access=access)  # type: ignore[arg-type]
    with pytest.raises(NotAStalwartStoreError, match="not a stalwart journal"):
        await store.open()  # a client inspects what is there as it opens
    await store.close()
    assert contents(path) == before
    assert wal_size(path) == 0


async def test_an_empty_file_is_initialised_by_a_writer_only(tmp_path: Path) -> None:
    """A 0-byte file: a reader says there is no journal (and leaves it empty); a client
    reads the same, and its first write creates the journal; so does a writer's open."""
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    reader = SQLiteStore(path, access="read")
    with pytest.raises(NotAStalwartStoreError, match=r"no stalwart journal.*empty"):
        await reader.open()
    assert path.stat().st_size == 0
    client = SQLiteStore(path, access="client")
    await client.open()
    try:
        with pytest.raises(NotAStalwartStoreError, match="no stalwart journal"):
            await client.list_runs()
        assert path.stat().st_size == 0
        await client.create_run(run_id="r", workflow="wf", input="[]", now=1.0)
        assert [r.run_id for r in await client.list_runs()] == ["r"]
    finally:
        await client.close()
    other = tmp_path / "other.db"
    other.write_bytes(b"")
    writer = SQLiteStore(other)
    await writer.open()
    await writer.close()
    assert other.stat().st_size > 0


async def test_a_reader_never_creates_a_missing_file(tmp_path: Path) -> None:
    """A reader of a path where nothing exists raises and creates neither file nor
    folder."""
    path = tmp_path / "nothing" / "here.db"
    with pytest.raises(NotAStalwartStoreError, match="no stalwart journal"):
        await SQLiteStore(path, access="read").open()
    assert not path.parent.exists()


# -- schema 1 (before checksums) -------------------------------------------------------


def downgrade_to_schema_1(path: Path) -> None:
    """Make a closed journal what stalwart wrote before checksums (schema 1)."""
    with sqlite3.connect(path) as conn:
        for stmt in ("ALTER TABLE runs DROP COLUMN event_head",
                     "ALTER TABLE runs DROP COLUMN run_digest",
                     "ALTER TABLE runs DROP COLUMN outcome_digest",
                     "ALTER TABLE events DROP COLUMN digest",
                     "ALTER TABLE events DROP COLUMN payload_ref", "DROP TABLE blobs",
                     "DROP TABLE board_entries", "DROP TABLE board_ops",
                     "UPDATE stalwart_meta SET value = '1' WHERE key = 'schema_version'"):
            conn.execute(stmt)
    conn.close()


async def test_a_journal_of_schema_1_is_migrated_by_a_writer_only(tmp_path: Path) -> None:
    """Readers refuse a journal written before checksums, untouched, saying a writer
    migrates it; a writer does (hashing its events), and then it verifies."""
    path = tmp_path / "journal.db"
    await make_journal(path, runs=3)
    downgrade_to_schema_1(path)
    for access in ("read", "client"):
        err = await refused(path, SchemaVersionError, access=access)
        assert "migrates it" in str(err)
    store = SQLiteStore(path)
    await store.open()
    try:
        for rec in await store.list_runs():
            kinds = [e.kind for e in await store.load_events(rec.run_id)]
            assert kinds == ["run_created", "run_claimed"] + ["step_completed"] * 3
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM stalwart_meta WHERE key = 'schema_version'"
                            ).fetchone() == (str(SCHEMA_VERSION),)
        assert conn.execute("SELECT count(*) FROM events WHERE digest = ''").fetchone() == (0,)
    conn.close()


# -- schema 2 (before blackboards) -----------------------------------------------------


async def test_a_journal_of_schema_2_gains_the_blackboard_tables_from_a_writer(
        tmp_path: Path) -> None:
    """A journal written before blackboards is refused by readers, untouched; a writer
    adds the tables (its runs stay as they were) and a board works on it."""
    from stalwart.store._board import BoardOp

    path = tmp_path / "journal.db"
    await make_journal(path, runs=2)
    with sqlite3.connect(path) as conn:
        for stmt in ("DROP TABLE board_entries", "DROP TABLE board_ops",
                     "ALTER TABLE events DROP COLUMN payload_ref", "DROP TABLE blobs",
                     "UPDATE stalwart_meta SET value = '2' WHERE key = 'schema_version'"):
            conn.execute(stmt)
    conn.close()
    err = await refused(path, SchemaVersionError, access="read")
    assert "migrates it" in str(err)
    store = SQLiteStore(path)
    await store.open()
    try:
        assert len(await store.list_runs()) == 2
        entry = await store.board_apply(BoardOp("post", "b", "r:1", key="k", value=1),
                                        now=1.0)
        assert entry is not None and entry.version == 1
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM stalwart_meta WHERE key = 'schema_version'"
                            ).fetchone() == (str(SCHEMA_VERSION),)
    conn.close()


async def test_a_journal_that_predates_board_watches_gets_them_from_its_next_writer(
        tmp_path: Path) -> None:
    """A journal of the current schema written before the blackboards' watches: a
    reader sees no watch (and changes nothing); the next writer adds the table, and a
    watch works on it."""
    from stalwart.store._board import BoardWatch, parse_pattern

    path = tmp_path / "journal.db"
    await make_journal(path, runs=1)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE board_watches")
    conn.close()
    reader = SQLiteStore(path, access="read")
    await reader.open()
    try:
        assert await reader.board_watches("b") == []
    finally:
        await reader.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        w = BoardWatch("b", "r", "board:b:1", parse_pattern("b", "*"), 1.0)
        await store.board_watch(w)
        assert await store.board_watches("b") == [w]
    finally:
        await store.close()

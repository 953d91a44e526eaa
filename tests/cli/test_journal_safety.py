"""The CLI and a journal it must not harm: read commands write nothing, damage is one
line, and ``stalwart doctor`` says what is wrong."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stalwart.store import EventKind, Finish, NewEvent, Owner, RunStatus, SQLiteStore

from .conftest import Cli, Project

HOST = socket.gethostname()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def _write(store: SQLiteStore, first: int, n: int, owner: Owner) -> None:
    for i in range(first, first + n):
        await store.create_run(run_id=f"r{i}", workflow="wf", input=f"[{i}]", now=1000.0 + i)
    for lease in await store.claim(owner, now=2000.0, lease_seconds=1e9, limit=n):
        await store.append(lease, [NewEvent(EventKind.STEP_COMPLETED, step_id="0",
                                            name="f", payload=f'"{lease.run_id}"')],
                           now=2001.0)
        if lease.run_id != f"r{first + n - 1}":  # the last stays running
            await store.append(lease, [NewEvent(EventKind.RUN_COMPLETED, payload="1")],
                               now=2002.0, finish=Finish(RunStatus.COMPLETED, result="1"))


def crashed(path: Path, owner: Owner) -> None:
    """A journal as a SIGKILL leaves it (its last runs only in the WAL): r0-r2 in the
    file, r3-r5 in the WAL; r2 and r5 still running, held by ``owner``."""
    async def make() -> None:
        live = path.parent / "live.db"
        store = SQLiteStore(live)
        await store.open()
        try:
            await _write(store, 0, 3, owner)
            with sqlite3.connect(live) as conn:
                conn.execute("PRAGMA wal_checkpoint(RESTART)")
            conn.close()
            await _write(store, 3, 3, owner)
            for side in ("", "-wal", "-shm"):
                shutil.copyfile(f"{live}{side}", f"{path}{side}")
        finally:
            await store.close()

    asyncio.run(make())


def state(path: Path) -> tuple[Any, ...]:
    wal = Path(f"{path}-wal")
    return (path.read_bytes(), path.stat().st_mtime_ns,
            wal.read_bytes() if wal.exists() else b"",
            wal.stat().st_mtime_ns if wal.exists() else None)


@pytest.mark.parametrize("command", [
    ["runs", "list"], ["runs", "show", "r5"], ["runs", "events", "r5"],
    ["runs", "trace", "r5"], ["stats"], ["dlq", "list"], ["workers", "list"],
    ["doctor"], ["runs", "show", "missing"], ["runs", "list", "--json"], ["board", "kb"],
], ids=lambda c: "-".join(c))
def test_read_commands_write_nothing(cli: Cli, project: Project,
                                     command: list[str]) -> None:
    """A journal with transactions only in its WAL (a crash): every read command sees
    them, and leaves the file and its WAL byte for byte, mtime included — no checkpoint,
    on success or on an error path."""
    path = Path(project.store)
    crashed(path, Owner("w", HOST, os.getpid()))
    before = state(path)
    result = cli(*command, "--store", project.store)
    assert result.exit_code == (2 if "missing" in command else 0), result.output
    if command[:2] == ["runs", "list"]:
        assert "r5" in result.stdout  # the WAL's runs are read
    assert state(path) == before


def _tamper(path: Path, sql: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(sql)
    conn.close()


def test_a_damaged_event_is_one_error_line_naming_run_and_event(
        cli: Cli, project: Project) -> None:
    """An event changed behind stalwart's back: `runs events`/`runs show` print one line
    naming the run and the event, exit 2, and leave the file as it was."""
    path = Path(project.store)
    crashed(path, Owner("w", HOST, os.getpid()))
    asyncio.run(_fold(path))
    _tamper(path, "UPDATE events SET payload = '\"forged\"' WHERE run_id = 'r4' AND seq = 3")
    before = path.read_bytes()
    for command in (["runs", "events", "r4"], ["runs", "show", "r4"]):
        line = cli.one_line_error(cli(*command, "--store", project.store), 2)
        assert "run r4, event 3" in line and "damaged" in line
    assert path.read_bytes() == before


async def _fold(path: Path) -> None:
    """Open and close a writer: the WAL is checkpointed into the file (a clean stop)."""
    store = SQLiteStore(path)
    await store.open()
    await store.close()


def test_doctor_on_a_sound_journal_exits_0_and_lists_reclaimable_runs(
        cli: Cli, project: Project) -> None:
    """A sound journal: exit 0, every run and event verified; a running run whose owner
    pid is gone from this host is listed as reclaimable now."""
    path = Path(project.store)
    crashed(path, Owner("w", HOST, dead_pid()))
    result = cli("doctor", "--store", project.store)
    assert result.exit_code == 0, result.output
    assert "6 run(s), 22 event(s) verified" in result.stdout
    assert "no damage found" in result.stdout
    assert "run r5 (pid" in result.stdout and "owner gone; reclaimable now" in result.stdout
    report = json.loads(cli("doctor", "--store", project.store, "--json").stdout)
    assert report["damaged"] is False and report["runs"] == 6
    assert {"wal", "structure", "schema", "chains", "status", "leases"} <= set(
        report["checked"])


def test_doctor_reports_a_damaged_chain_and_exits_1(cli: Cli, project: Project) -> None:
    """Each damaged run is named; exit 1; the file is not changed."""
    path = Path(project.store)
    crashed(path, Owner("w", HOST, os.getpid()))
    asyncio.run(_fold(path))
    _tamper(path, "UPDATE events SET payload = 'x' WHERE run_id IN ('r1', 'r4') AND seq = 3")
    before = path.read_bytes()
    result = cli("doctor", "--store", project.store)
    assert result.exit_code == 1, result.output
    assert "run r1, event 3" in result.stdout and "run r4, event 3" in result.stdout
    assert "DAMAGED: 2 problem(s)" in result.stdout
    assert path.read_bytes() == before


def test_doctor_reports_lost_wal_frames_and_checks_the_rest(cli: Cli,
                                                            project: Project) -> None:
    """A flipped byte in the WAL: the doctor names the frame (exit 1), checks the rest
    on a copy as SQLite would now read it, and leaves the files — and the WAL index that
    proves what was committed — untouched; the views refuse the journal meanwhile."""
    path = Path(project.store)
    crashed(path, Owner("w", HOST, os.getpid()))
    with open(f"{path}-wal", "r+b") as fh:
        fh.seek(32 + 24 + 200)  # frame 1's page
        byte = fh.read(1)
        fh.seek(32 + 24 + 200)
        fh.write(bytes([byte[0] ^ 0x10]))
    sides = {s: Path(f"{path}{s}").read_bytes() for s in ("", "-wal", "-shm")}
    result = cli("doctor", "--store", project.store)
    assert result.exit_code == 1, result.output
    assert "WAL frame 1 fails its checksum" in result.stdout
    assert "checked on a copy" in result.stdout
    line = cli.one_line_error(cli("runs", "list", "--store", project.store), 2)
    assert "WAL frame 1 fails its checksum" in line
    assert {s: Path(f"{path}{s}").read_bytes() for s in ("", "-wal", "-shm")} == sides


def test_doctor_reports_a_status_its_journal_contradicts(cli: Cli, project: Project) -> None:
    """A run row that says completed while its journal never ended it is damage."""
    path = Path(project.store)
    crashed(path, Owner("w", HOST, os.getpid()))
    asyncio.run(_fold(path))
    _tamper(path, "UPDATE runs SET status = 'failed' WHERE run_id = 'r0'")
    result = cli("doctor", "--store", project.store)
    assert result.exit_code == 1
    assert "run r0 is failed but its journal ends with run_completed" in result.stdout


def test_doctor_without_a_journal_exits_2(cli: Cli, project: Project) -> None:
    """Nothing at the path: one error line, exit 2, nothing created."""
    line = cli.one_line_error(cli("doctor", "--store", project.store), 2)
    assert "no stalwart journal" in line
    assert not Path(project.store).exists()


def test_runs_show_says_a_dead_owner_is_gone(cli: Cli, project: Project) -> None:
    """A running run whose owner pid is gone from this host: runs show says so."""
    path = Path(project.store)
    crashed(path, Owner("w", HOST, dead_pid()))
    result = cli("runs", "show", "r5", "--store", project.store)
    assert result.exit_code == 0, result.output
    assert "(owner gone; reclaimable now)" in result.stdout


@pytest.mark.postgres
def test_doctor_on_postgres(cli: Cli, pg_url: str) -> None:
    """The doctor checks a PostgreSQL journal's schema, chains and leases the same way."""
    import psycopg

    async def make() -> None:
        from stalwart.store._postgres import PostgresStore

        store = PostgresStore(pg_url)
        await store.open()
        await store.create_run(run_id="p", workflow="wf", input="[]", now=1.0)
        [lease] = await store.claim(Owner("w", HOST, dead_pid()), now=2.0,
                                    lease_seconds=1e9, limit=1)
        await store.append(lease, [NewEvent(EventKind.STEP_COMPLETED, "0", "f", "1")],
                           now=3.0)
        await store.close()

    asyncio.run(make())
    result = cli("doctor", "--store", pg_url)
    assert result.exit_code == 0, result.output
    assert "1 run(s), 3 event(s) verified" in result.stdout
    assert "owner gone; reclaimable now" in result.stdout
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE stalwart_events SET name = 'g' WHERE seq = 3")
    result = cli("doctor", "--store", pg_url)
    assert result.exit_code == 1
    assert "run p, event 3" in result.stdout


def _relations(url: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = current_schema() ORDER BY 1").fetchall()


@pytest.mark.postgres
@pytest.mark.parametrize("foreign", [False, True], ids=["empty", "foreign-tables"])
def test_read_commands_create_nothing_in_postgres(cli: Cli, pg_url: str,
                                                  foreign: bool) -> None:
    """On a database with no journal — empty, or holding an application's tables —
    every read command says there is none (exit 2) and creates nothing."""
    import psycopg

    if foreign:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE customers (id INT)")
            conn.execute("CREATE TABLE orders (id INT)")
    before = _relations(pg_url)
    for command in (["runs", "list"], ["runs", "show", "x"], ["runs", "events", "x"],
                    ["stats"], ["dlq", "list"], ["workers", "list"], ["doctor"],
                    ["board", "kb"]):
        line = cli.one_line_error(cli(*command, "--store", pg_url), 2)
        assert "no stalwart journal" in line, command
    assert _relations(pg_url) == before


@pytest.mark.parametrize("url", ["postgresql://127.0.0.1:54x32/postgres",
                                 "postgresql://127.0.0.1:5432/postgres?sslmode=bogus"])
def test_a_mistyped_postgres_url_is_one_line_and_exit_2(cli: Cli, url: str) -> None:
    """A malformed URL or an invalid option is refused at once: one line, exit 2."""
    line = cli.one_line_error(cli("runs", "list", "--store", url), 2)
    assert "invalid PostgreSQL URL" in line

"""``stalwart worker`` and ``stalwart workers list`` as real processes.

Workers run ``fleet_app`` (this folder) on an SQLite journal — the commands work the same
on PostgreSQL, where the last test checks that notifications wake a worker between polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fleet_app as fa  # this folder is on sys.path (see conftest.py)
import pytest

from stalwart import Runtime
from stalwart.errors import NotAStalwartStoreError
from stalwart.store import RunRecord, RunStatus, SQLiteStore

HERE = Path(__file__).parent
Fleet = Any  # conftest.Fleet (conftest modules are not importable by name)

pytestmark = pytest.mark.slow


def cli(*args: str, cwd: Path = HERE) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "stalwart.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def workers_json(store: str) -> dict[str, Any]:
    out = cli("workers", "list", "--store", store, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


async def until(check: Callable[[], Any], timeout: float = 30.0) -> None:

    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def record(store: str, run_id: str) -> RunRecord:
    async with Runtime(store, worker=False) as client:
        return await client.get_run(run_id)


async def start(store: str, workflow: Any, *args: Any, run_id: str) -> None:
    async with Runtime(store, worker=False) as client:
        await client.start(workflow, *args, run_id=run_id)


async def status_is(store: str, run_id: str, *statuses: RunStatus) -> bool:
    return (await record(store, run_id)).status in statuses


async def registered(store: str, proc: subprocess.Popen[bytes]) -> bool:
    try:
        async with Runtime(store, worker=False) as client:
            return any(w.pid == proc.pid for w in await client.store.list_workers(since=0))
    except NotAStalwartStoreError:  # the worker has not created its journal yet
        return False


@pytest.fixture
def journal(tmp_path: Path) -> str:
    return str(tmp_path / "journal.db")


async def test_worker_executes_runs_and_stops_cleanly_on_sigterm(
        journal: str, make_fleet: Callable[..., Fleet]) -> None:
    """Runs enqueued by a client complete; the registry shows the worker live, then
    stopped after SIGTERM (exit status 0)."""
    fleet = make_fleet(journal)
    proc = fleet.start("--poll", "0.05", "--concurrency", "3")
    await until(lambda: registered(journal, proc))
    for i in range(3):
        await start(journal, fa.chain, i, run_id=f"run-{i}")
    for i in range(3):
        await until(lambda i=i: status_is(journal, f"run-{i}", RunStatus.COMPLETED))
        assert json.loads((await record(journal, f"run-{i}")).result or "") == fa.expected(i)
    listed = workers_json(journal)["workers"]
    assert [(w["pid"], w["state"], w["concurrency"]) for w in listed] == [
        (proc.pid, "live", 3)]
    assert fleet.stop(proc) == 0, fleet.log(proc)
    assert "stopped" in fleet.log(proc)
    assert [w["state"] for w in workers_json(journal)["workers"]] == ["stopped"]


async def test_sigterm_lets_an_executing_step_finish_within_the_grace_period(
        journal: str, make_fleet: Callable[..., Fleet]) -> None:
    """SIGTERM during a 1.5 s step: the worker finishes the run, then exits."""
    fleet = make_fleet(journal)
    proc = fleet.start("--poll", "0.05", "--grace", "20")
    await start(journal, fa.linger, 1.5, run_id="slow")
    await until(lambda: status_is(journal, "slow", RunStatus.RUNNING))
    assert fleet.stop(proc) == 0, fleet.log(proc)
    assert (await record(journal, "slow")).status == RunStatus.COMPLETED


async def test_after_the_grace_period_the_run_is_handed_back_and_resumed(
        journal: str, make_fleet: Callable[..., Fleet]) -> None:
    """A step longer than --grace is interrupted: the run goes back to pending at once
    and the next worker completes it."""
    fleet = make_fleet(journal)
    proc = fleet.start("--poll", "0.05", "--grace", "0.2")
    await start(journal, fa.linger, 2.0, run_id="slow")
    await until(lambda: status_is(journal, "slow", RunStatus.RUNNING))
    assert fleet.stop(proc) == 0, fleet.log(proc)
    assert "handed 1 unfinished run(s) back" in fleet.log(proc)
    rec = await record(journal, "slow")
    assert (rec.status, rec.lease_owner) == (RunStatus.PENDING, None)
    fleet.start("--poll", "0.05")
    await until(lambda: status_is(journal, "slow", RunStatus.COMPLETED))


async def test_a_synchronous_step_past_the_grace_period_ends_with_the_worker(
        tmp_path: Path, journal: str, make_fleet: Callable[..., Fleet]) -> None:
    """A thread cannot be stopped: the worker does not hand its run back while the
    step runs (another worker would run it beside it), it exits at the end of
    --grace, and the step ran once to its end, by the worker that took the run over."""
    marker = tmp_path / "marker"
    fleet = make_fleet(journal)
    proc = fleet.start("--poll", "0.05", "--grace", "0.2")
    await start(journal, fa.blocking, str(marker), 5.0, run_id="blocked")
    await until(lambda: asyncio.to_thread(marker.exists))
    stopped_at = time.monotonic()
    assert fleet.stop(proc) == 0, fleet.log(proc)
    assert time.monotonic() - stopped_at < 4.0  # not the 5 s the step would take
    assert "synchronous step still running in a thread (blocked)" in fleet.log(proc)
    rec = await record(journal, "blocked")
    assert (rec.status, rec.owner_pid) == (RunStatus.RUNNING, proc.pid)  # not handed back
    other = fleet.start("--poll", "0.05")  # on this host: the dead owner's run is taken
    await until(lambda: status_is(journal, "blocked", RunStatus.COMPLETED), timeout=30)
    assert marker.read_text().split("\n")[:-1] == [
        f"start {proc.pid}", f"start {other.pid}", f"end {other.pid}"]
    assert fleet.stop(other) == 0, fleet.log(other)


async def test_pool_restricts_what_a_worker_claims(
        journal: str, make_fleet: Callable[..., Fleet]) -> None:
    """A --pool gpu worker runs gpu_chain and leaves chain to a default-pool worker."""
    fleet = make_fleet(journal)
    gpu = fleet.start("--poll", "0.05", "--pool", "gpu")
    await start(journal, fa.chain, 1, run_id="plain")
    await start(journal, fa.gpu_chain, 1, run_id="pooled")
    await until(lambda: status_is(journal, "pooled", RunStatus.COMPLETED))
    assert (await record(journal, "plain")).status == RunStatus.PENDING
    assert workers_json(journal)["workers"][0]["pools"] == ["gpu"]
    fleet.stop(gpu)
    fleet.start("--poll", "0.05", "--pool", "default")
    await until(lambda: status_is(journal, "plain", RunStatus.COMPLETED))


async def test_workers_list_shows_a_killed_worker_dead_with_its_lease(
        journal: str, make_fleet: Callable[..., Fleet]) -> None:
    """SIGKILL leaves the worker's row and lease: once its heartbeat is older than its
    lease, the list calls it dead and shows the run it still holds."""
    fleet = make_fleet(journal)
    proc = fleet.start("--poll", "0.05", "--lease", "1")
    await start(journal, fa.linger, 30.0, run_id="held")
    await until(lambda: status_is(journal, "held", RunStatus.RUNNING))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    await asyncio.sleep(1.2)
    [row] = workers_json(journal)["workers"]
    assert (row["pid"], row["state"]) == (proc.pid, "dead")
    assert row["heartbeat_age"] > 1.0
    assert [lease["run_id"] for lease in row["leases"]] == ["held"]
    table = cli("workers", "list", "--store", journal)
    assert table.returncode == 0
    assert "dead" in table.stdout and "1 (1 expired)" in table.stdout


async def test_a_sigkilled_worker_on_this_host_is_dead_at_once(
        journal: str, make_fleet: Callable[..., Fleet]) -> None:
    """A worker SIGKILLed on this host shows dead at once (its pid is gone, as the
    engine judges it), long before its 30 s lease and heartbeat age out; its run is
    shown as reclaimable now."""
    fleet = make_fleet(journal)
    proc = fleet.start("--poll", "0.05", "--lease", "30")
    await start(journal, fa.linger, 30.0, run_id="held")
    await until(lambda: status_is(journal, "held", RunStatus.RUNNING))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [row] = workers_json(journal)["workers"]
    assert (row["pid"], row["state"]) == (proc.pid, "dead")
    assert row["heartbeat_age"] < 30
    assert [lease["run_id"] for lease in row["leases"]] == ["held"]
    table = cli("workers", "list", "--store", journal)
    assert "dead" in table.stdout and "reclaimable now" in table.stdout
    show = cli("runs", "show", "held", "--store", journal)
    assert "owner gone; reclaimable now" in show.stdout, show.stdout


def test_worker_without_an_import_is_a_usage_error(journal: str) -> None:
    """`stalwart worker` with no --import fails with one error line and status 2."""
    out = cli("worker", "--store", journal)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1


def test_worker_with_a_module_without_workflows_is_a_usage_error(journal: str) -> None:
    """--import of a module that defines no workflow is refused before anything runs."""
    out = cli("worker", "--store", journal, "--import", "json")
    assert out.returncode == 2
    assert "defines no workflows" in out.stderr


def test_workers_list_with_no_workers(tmp_path: Path) -> None:
    """An empty registry says so (and --json gives an empty list)."""
    journal = str(tmp_path / "journal.db")

    async def make() -> None:  # an empty journal (a client alone would create none)
        store = SQLiteStore(journal)
        await store.open()
        await store.close()

    asyncio.run(make())
    out = cli("workers", "list", "--store", journal)
    assert out.returncode == 0 and "no workers heard from" in out.stdout
    assert workers_json(journal)["workers"] == []


async def test_notifications_wake_a_worker_between_polls(
        pg_url: str, make_fleet: Callable[..., Fleet]) -> None:
    """On PostgreSQL a worker polling once a minute still starts a new run at once: the
    run's creation NOTIFYs it."""
    fleet = make_fleet(pg_url)
    proc = fleet.start("--poll", "60")
    await until(lambda: registered(pg_url, proc))
    await start(pg_url, fa.chain, 3, run_id="woken")
    await until(lambda: status_is(pg_url, "woken", RunStatus.COMPLETED), timeout=20)
    assert fleet.stop(proc) == 0, fleet.log(proc)


def reserved_port() -> tuple[socket.socket, int]:
    """A port held by a bound socket that does not listen: connections to it are refused,
    and no other process can take it before the test listens on it (``sock.listen()``)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, int(sock.getsockname()[1])


async def wait_for_log(fleet: Fleet, proc: subprocess.Popen[bytes], text: str) -> None:
    async def seen() -> bool:
        return text in fleet.log(proc)
    await until(seen, timeout=30)


async def test_a_worker_waits_for_an_unreachable_store_and_stops_on_sigterm(
        make_fleet: Callable[..., Fleet]) -> None:
    """Nothing listens where the store should be: the worker says so and retries
    instead of exiting; SIGTERM stops it cleanly."""
    held, port = reserved_port()
    with held:
        fleet = make_fleet(f"postgresql://127.0.0.1:{port}/nowhere")
        proc = fleet.start()
        await wait_for_log(fleet, proc, "cannot reach the store")
        await wait_for_log(fleet, proc, "retrying in 2s")  # it backs off
        assert proc.poll() is None
        assert fleet.stop(proc) == 0, fleet.log(proc)
    assert "while waiting for the store: stopping" in fleet.log(proc)


@pytest.mark.postgres
async def test_a_worker_given_a_database_that_does_not_exist_exits_instead_of_retrying(
        pg_url: str, make_fleet: Callable[..., Fleet]) -> None:
    """The server answers that there is no such database (a typo): no retry cures
    that, unlike a server that is still starting, so the worker exits 1 at once."""
    target = urllib.parse.urlsplit(pg_url)
    wrong = target._replace(path="/no_such_database_for_stalwart").geturl()
    fleet = make_fleet(wrong)
    proc = fleet.start()
    deadline = time.monotonic() + 30
    while proc.poll() is None:
        assert time.monotonic() < deadline, fleet.log(proc)
        await asyncio.sleep(0.05)
    assert proc.returncode == 1, fleet.log(proc)
    assert 'database "no_such_database_for_stalwart" does not exist' in fleet.log(proc)
    assert "retrying" not in fleet.log(proc)


async def test_a_worker_started_before_its_database_serves_once_it_is_up(
        pg_url: str, make_fleet: Callable[..., Fleet]) -> None:
    """The worker's address for PostgreSQL is a proxy that opens only later (a database
    starting after its workers): the worker retries, connects, and executes runs."""
    target = urllib.parse.urlsplit(pg_url)
    held, port = reserved_port()
    proxied = target._replace(netloc=f"{target.username + '@' if target.username else ''}"
                                     f"127.0.0.1:{port}").geturl()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def forward(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(target.hostname or "127.0.0.1",
                                                           target.port or 5432)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    fleet = make_fleet(proxied)
    proc = fleet.start("--poll", "0.2")
    await wait_for_log(fleet, proc, "cannot reach the store")
    held.listen()
    proxy = await asyncio.start_server(forward, sock=held)
    try:
        await wait_for_log(fleet, proc, "executes")
        await start(pg_url, fa.chain, 3, run_id="late-db")
        await until(lambda: status_is(pg_url, "late-db", RunStatus.COMPLETED), timeout=30)
        # Stop it while the proxy (on this event loop) still carries its goodbyes.
        proc.send_signal(signal.SIGTERM)

        async def stopped() -> bool:
            return proc.poll() is not None
        await until(stopped, timeout=30)
        assert proc.returncode == 0, fleet.log(proc)
    finally:
        proxy.close()


@pytest.mark.parametrize("url", ["postgresql://127.0.0.1:54x32/postgres",
                                 "postgresql://127.0.0.1:5432/postgres?sslmode=bogus"])
def test_a_worker_given_a_mistyped_url_exits_2_at_once(url: str) -> None:
    """A typo in the URL is no outage: one error line, exit 2, no retry."""
    out = cli("worker", "--store", url, "--import", "fleet_app")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: invalid PostgreSQL URL") and \
        out.stderr.count("\n") == 1
    assert "retrying" not in out.stderr


@pytest.mark.postgres
async def test_a_worker_creates_a_journal_beside_other_tables_only_when_told(
        make_fleet: Callable[..., Fleet]) -> None:
    """A schema holding an application's tables: the worker refuses to create the
    journal there (exit 2, nothing created); with --create it does, and serves."""
    import uuid

    import psycopg

    base = os.environ.get("STALWART_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("set STALWART_TEST_POSTGRES_URL to run this test")
    from stalwart.testing import with_search_path

    schema = f"stalwart_app_{uuid.uuid4().hex[:10]}"
    url = with_search_path(base, schema)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".customers (id INT)')
    try:
        out = cli("worker", "--store", url, "--import", "fleet_app")
        assert out.returncode == 2, out.stderr
        assert "customers" in out.stderr and "--create" in out.stderr
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM information_schema.tables "
                                "WHERE table_schema = current_schema()").fetchone() == (1,)
        fleet = make_fleet(url)
        proc = fleet.start("--poll", "0.1", "--create")
        await wait_for_log(fleet, proc, "executes")  # the journal is there now
        await start(url, fa.chain, 3, run_id="beside")
        await until(lambda: status_is(url, "beside", RunStatus.COMPLETED), timeout=30)
        assert fleet.stop(proc) == 0, fleet.log(proc)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

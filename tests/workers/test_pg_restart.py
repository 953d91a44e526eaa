"""PostgreSQL restarted under two working ``stalwart worker`` processes.

The restart drops every connection: journal writes fail with retryable StoreErrors, the
executions they belonged to hand their runs back (or their leases lapse), and the
workers' pools, listeners, heartbeats and schedulers reconnect. Afterwards every run
has completed with the right result, each effect was applied once, and no two
executions of one step overlapped.

The server restarted is a throwaway cluster this test creates for itself (``initdb`` and
``pg_ctl`` from ``/usr/lib/postgresql/*/bin``, on a free port, in a temporary folder
removed afterwards) — never the machine's own, which other tests and people use. Where
the binaries are missing, or ``initdb`` cannot run (as root with no ``postgres`` user
to run it as), the test is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fleet_checks as fc
import pytest
from conftest import create_journal  # type: ignore[import-not-found]

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

RUNS = 300


def _binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/VERSION/bin`` with initdb and pg_ctl."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                   key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()])
    for folder in reversed(found):
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """A PostgreSQL cluster of this test's own: its folder, port, and how to run its
    binaries (as the ``postgres`` user when the test runs as root)."""

    bin: Path
    data: Path
    port: int
    as_user: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str, timeout: float = 60) -> None:
        options = f"-p {self.port} -k {self.data.parent} -c listen_addresses=127.0.0.1"
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data),
                        "-o", options, "-l", str(self.data.parent / "server.log"), "-w",
                        "-t", str(int(timeout)), *args],
                       check=True, capture_output=True, timeout=timeout + 10)

    def ready(self) -> bool:
        return subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p",
                               str(self.port)], check=False).returncode == 0


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A fresh cluster on a free port, started; stopped and deleted after the test."""
    binaries = _binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) under "
                    "/usr/lib/postgresql/*/bin to make a throwaway cluster")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="stalwart-pg-restart-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            pytest.skip("running as root, and there is no 'postgres' user to run initdb as")
        if shutil.which("runuser") is None:
            shutil.rmtree(folder)
            pytest.skip("running as root, and there is no runuser to run initdb as postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    made = Cluster(binaries, folder / "data", _free_port(), as_user)
    try:
        subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(made.data), "-U",
                        "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        made.ctl("start")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        out = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"cannot make a throwaway PostgreSQL cluster: {exc}: "
                    f"{out.decode(errors='replace').strip()[:300]}")
    try:
        yield made
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(made.data), "-m",
                        "immediate", "-w", "stop"], check=False, capture_output=True,
                       timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def restart(cluster: Cluster, timeout: float = 60.0) -> None:
    """Restart the test's own cluster and wait (bounded) until it accepts connections."""
    cluster.ctl("-m", "fast", "restart", timeout=timeout)
    deadline = time.monotonic() + timeout
    while not cluster.ready():
        assert time.monotonic() < deadline, "PostgreSQL did not come back"
        time.sleep(0.2)


async def test_workers_reconnect_after_a_postgres_restart_and_finish(
        cluster: Cluster, make_fleet: Callable[..., Any]) -> None:
    """Restart PostgreSQL mid-workload: the workers reconnect and finish every run, with
    nothing lost or duplicated."""
    url = cluster.url
    await asyncio.to_thread(create_journal, url)
    fc.create_ledgers(url)
    expected = await fc.enqueue(url, range(RUNS))
    fleet = make_fleet(url, env={"FLEET_LEDGER_URL": url, "FLEET_STEP_DELAY": "0.05"})
    procs = [fleet.start("--concurrency", "10", "--lease", "10", "--poll", "0.2")
             for _ in range(2)]
    await fc.wait_for_completed(url, 20, timeout=30)
    await asyncio.to_thread(restart, cluster)
    restarted = time.time()
    at_restart = await asyncio.to_thread(fc.count_completed, url)
    await fc.wait_for_completed(url, RUNS, timeout=90)
    for proc in procs:
        assert proc.poll() is None, fleet.log(proc)
    # The runs may finish before the next heartbeat is due (every lease/3 s): wait,
    # bounded, for a heartbeat written after the restart.
    deadline = time.monotonic() + 30
    while True:
        beats = dict(fc.query(url, "SELECT pid, heartbeat_at FROM stalwart_workers"))
        if all(beats[p.pid] > restarted for p in procs) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    for proc in procs:
        assert fleet.stop(proc) == 0, fleet.log(proc)

    assert at_restart < RUNS
    assert all(beats[p.pid] > restarted for p in procs)  # heartbeats resumed
    assert fc.lost(url, expected) == []
    dedup = fc.dedup_keys(url)
    assert len(dedup) == len(set(dedup)) == RUNS * 5
    by_key = fc.executions(url)
    assert set(by_key) == set(dedup)
    assert all(r.ended_at is not None for runs in by_key.values() for r in runs)
    assert fc.overlaps(by_key, {}) == []

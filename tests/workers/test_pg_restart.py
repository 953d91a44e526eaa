"""PostgreSQL restarted under two working ``stalwart worker`` processes.

The restart drops every connection: journal writes fail with retryable StoreErrors, the
executions they belonged to hand their runs back (or their leases lapse), and the
workers' pools, listeners, heartbeats and schedulers reconnect. Afterwards every run
has completed with the right result, each effect was applied once, and no two
executions of one step overlapped.

This restarts the machine's shared server, so it runs only when asked:
``STALWART_TEST_PG_RESTART=1`` (or ``CI=true``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fleet_checks as fc
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(
        os.environ.get("STALWART_TEST_PG_RESTART") != "1" and os.environ.get("CI") != "true",
        reason="restarts the shared PostgreSQL server: set STALWART_TEST_PG_RESTART=1 "
               "(CI=true does too) to run it"),
]

RUNS = 300


def restart_postgres(timeout: float = 60.0) -> None:
    """Restart the local cluster and wait (bounded) until it accepts connections."""
    versions = sorted(Path("/etc/postgresql").iterdir(), key=lambda p: p.name)
    if not versions or shutil.which("pg_ctlcluster") is None:
        pytest.skip("no local PostgreSQL cluster to restart (pg_ctlcluster)")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main",
                    "restart"], check=True, timeout=timeout, capture_output=True)
    deadline = time.monotonic() + timeout
    while subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode:
        assert time.monotonic() < deadline, "PostgreSQL did not come back"
        time.sleep(0.2)


async def test_workers_reconnect_after_a_postgres_restart_and_finish(
        pg_url: str, make_fleet: Callable[..., Any]) -> None:
    """Restart PostgreSQL mid-workload: the workers reconnect and finish every run, with
    nothing lost or duplicated."""
    fc.create_ledgers(pg_url)
    expected = await fc.enqueue(pg_url, range(RUNS))
    fleet = make_fleet(pg_url, env={"FLEET_LEDGER_URL": pg_url, "FLEET_STEP_DELAY": "0.05"})
    procs = [fleet.start("--concurrency", "10", "--lease", "10", "--poll", "0.2")
             for _ in range(2)]
    await fc.wait_for_completed(pg_url, 20, timeout=30)
    await asyncio.to_thread(restart_postgres)
    restarted = time.time()
    at_restart = await asyncio.to_thread(fc.count_completed, pg_url)
    await fc.wait_for_completed(pg_url, RUNS, timeout=90)
    for proc in procs:
        assert proc.poll() is None, fleet.log(proc)
    # The runs may finish before the next heartbeat is due (every lease/3 s): wait,
    # bounded, for a heartbeat written after the restart.
    deadline = time.monotonic() + 30
    while True:
        beats = dict(fc.query(pg_url, "SELECT pid, heartbeat_at FROM stalwart_workers"))
        if all(beats[p.pid] > restarted for p in procs) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    for proc in procs:
        assert fleet.stop(proc) == 0, fleet.log(proc)

    assert at_restart < RUNS
    assert all(beats[p.pid] > restarted for p in procs)  # heartbeats resumed
    assert fc.lost(pg_url, expected) == []
    dedup = fc.dedup_keys(pg_url)
    assert len(dedup) == len(set(dedup)) == RUNS * 5
    by_key = fc.executions(pg_url)
    assert set(by_key) == set(dedup)
    assert all(r.ended_at is not None for runs in by_key.values() for r in runs)
    assert fc.overlaps(by_key, {}) == []

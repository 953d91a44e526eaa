"""The crash test on PostgreSQL: four ``stalwart worker`` processes share 1,000 runs and
two of them are SIGKILLed at random moments.

Every effect step writes a deduplicating ledger and a raw one-row-per-execution ledger
(``fleet_app``). Afterwards every run has completed with the result of a crash-free
run, the deduplicating ledger holds each step's key exactly once, a step ran more than
once only when a killed worker was executing it, and no two executions of one step
overlapped in time (``fleet_checks``).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import fleet_app as fa  # this folder is on sys.path (see conftest.py)
import fleet_checks as fc
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

RUNS = 1_000
WORKERS = 4


async def test_four_workers_two_killed_lose_nothing_and_duplicate_nothing(
        pg_url: str, make_fleet: Callable[..., Any]) -> None:
    """1,000 runs on 4 workers, 2 SIGKILLed: all complete, each effect applied once, and
    only steps in flight at a kill ran again — never two executions at once."""
    rng = random.Random(20_251_105)
    fc.create_ledgers(pg_url)
    expected = await fc.enqueue(pg_url, range(RUNS))
    fleet = make_fleet(pg_url, env={"FLEET_LEDGER_URL": pg_url, "FLEET_STEP_DELAY": "0.01"})
    procs = [fleet.start("--concurrency", "25", "--lease", "10", "--poll", "0.2")
             for _ in range(WORKERS)]
    killed: dict[int, float] = {}
    sent: dict[int, float] = {}
    # Each kill lands at a random point of the work, chosen by how many runs have
    # completed (a random delay in seconds once fell after the last run on a fast pass).
    kill_at = sorted(rng.sample(range(30, RUNS // 2), 2))
    for victim, when in zip(rng.sample(procs, 2), kill_at, strict=True):
        await fc.wait_for_completed(pg_url, when, timeout=60)
        assert victim.poll() is None, fleet.log(victim)
        sent[victim.pid] = time.time()
        victim.kill()
        victim.wait()  # reaped: a zombie would still look alive to its neighbours
        # Its death, taken once it is dead: an execution that started after this was
        # not one of its own (taken before the kill, one could start in between).
        killed[victim.pid] = time.time()
    at_kills = await asyncio.to_thread(fc.count_completed, pg_url)
    await fc.wait_for_completed(pg_url, RUNS, timeout=75)
    for proc in procs:
        if proc.pid not in killed:
            assert fleet.stop(proc) == 0, fleet.log(proc)

    assert at_kills < RUNS  # the kills landed while there was work left
    assert fc.lost(pg_url, expected) == []
    dedup = fc.dedup_keys(pg_url)
    assert len(dedup) == len(set(dedup)) == RUNS * fa.STEPS
    by_key = fc.executions(pg_url)
    assert set(by_key) == set(dedup)
    reexecuted = {key: runs for key, runs in by_key.items() if len(runs) > 1}
    for runs in reexecuted.values():
        assert all(r.pid in killed and r.started_at < killed[r.pid] for r in runs[:-1])
    assert fc.overlaps(by_key, killed) == []
    assert len(reexecuted) <= 2 * 25 * 1  # at most one step in flight per run killed
    # A dead worker's runs are the oldest work: a worker on this host sees the dead pid
    # and claims them first, before the backlog of pending runs (issue 13.8). Taking
    # them over by lease expiry instead would take the full 10 s lease.
    latencies = sorted(fc.takeovers(pg_url, sent, killed))
    median = statistics.median(latencies)
    print(f"takeover after a SIGKILL: {len(latencies)} runs, median {median:.2f}s, "
          f"max {latencies[-1]:.2f}s")
    assert len(latencies) >= 2  # each victim held runs when it died
    assert median <= 2.0, latencies
    assert latencies[-1] < 10.0, latencies  # none waited for its lease to expire

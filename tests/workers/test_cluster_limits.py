"""Cluster-wide limits across real worker processes on PostgreSQL.

What "a rate limit of N calls/min" guarantees, exactly: the limit is a token bucket
holding ``burst`` requests and refilling N/60 per second, shared by every worker. So any
window of T seconds holds at most ``burst + N·T/60`` calls — a 60-second window at most
``N + burst`` — whichever workers make them. The test checks every window between two
recorded calls, allowing each call's start ``JITTER`` seconds of lateness after its
reservation (the worker's event loop and the tool's own start).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from stalwart import Runtime

HERE = Path(__file__).parent
RPM, BURST, RUNS, WORKERS = 240, 2, 60, 4
RATE = RPM / 60.0
JITTER = 0.25


def ledger(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Child processes, killed after the test if still running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def logs(folder: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.glob("*.log")))


def spawn(procs: list[subprocess.Popen[bytes]], args: list[str], env: dict[str, str],
          log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=HERE, env={**os.environ, **env},
                                stdout=out, stderr=subprocess.STDOUT)
    procs.append(proc)
    return proc


async def test_a_global_rate_limit_holds_across_four_workers(
        pg_url: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """Four `stalwart worker` processes under one 240/min limit (burst 2): every window
    between two calls holds at most burst + rate·(its length + jitter) calls, all runs
    complete, each call happens once, and every worker made some of them."""
    import limits_app

    ledger(pg_url, "CREATE TABLE limits_calls (key TEXT PRIMARY KEY, pid INT, "
                   "started_at DOUBLE PRECISION)")
    env = {"LIMITS_LEDGER_URL": pg_url, "LIMITS_RPM": str(RPM), "LIMITS_BURST": str(BURST)}
    client = Runtime(pg_url, worker=False)
    client.register(limits_app.stamp_once)
    async with client:
        handles = [await client.start(limits_app.stamp_once) for _ in range(RUNS)]
        for i in range(WORKERS):
            spawn(procs, ["-m", "stalwart.cli", "worker", "--store", pg_url, "--import",
                          "limits_app", "--concurrency", str(RUNS // WORKERS)], env,
                  tmp_path / f"worker-{i}.log")
        for h in handles:
            await h.result(timeout=90)
    rows = ledger(pg_url, "SELECT started_at, pid FROM limits_calls ORDER BY started_at")
    assert len(rows) == RUNS, logs(tmp_path)
    times = [float(str(r[0])) for r in rows]
    assert len({r[1] for r in rows}) == WORKERS, "every worker should have made calls"
    worst = max((j - i + 1) - (BURST + RATE * (times[j] - times[i] + JITTER))
                for i in range(RUNS) for j in range(i, RUNS))
    assert worst <= 1e-9, f"a window exceeded the limit by {worst:.2f} calls"
    # The limit did bind: unthrottled, 60 calls take well under a second.
    assert times[-1] - times[0] >= (RUNS - BURST) / RATE - JITTER
    buckets = ledger(pg_url, "SELECT key, capacity, refill_per_second FROM stalwart_rate_buckets")
    assert buckets == [("tool:stamp#requests", float(BURST), RATE)]


async def test_a_bulkhead_of_two_holds_across_three_processes(
        pg_url: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """Three processes, eight calls each, into one pool of max_concurrent=2: at no
    instant do more than two calls run (measured inside the slots), and all 24 run."""
    ledger(pg_url, "CREATE TABLE limits_slots (id SERIAL PRIMARY KEY, pid INT, "
                   "started_at DOUBLE PRECISION, ended_at DOUBLE PRECISION)")
    children = [spawn(procs, ["limits_app.py", "bulkhead", pg_url, pg_url, "8"], {},
                      tmp_path / f"bulkhead-{i}.log") for i in range(3)]
    for i, child in enumerate(children):
        code = await asyncio.to_thread(child.wait, 60)
        assert code == 0, (tmp_path / f"bulkhead-{i}.log").read_text()
    rows = ledger(pg_url, "SELECT pid, started_at, ended_at FROM limits_slots")
    assert len(rows) == 24
    assert len({r[0] for r in rows}) == 3
    edges = sorted([(float(str(r[1])), 1) for r in rows] + [(float(str(r[2])), -1) for r in rows],
                   key=lambda e: (e[0], e[1]))  # at a tie, an end comes before a start
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak == 2
    assert ledger(pg_url, "SELECT count(*) FROM stalwart_bulkhead_slots") == [(0,)]

"""What the fleet tests read back from PostgreSQL: run outcomes and the two ledgers.

The effect steps of ``fleet_app`` write ``fleet_dedup`` (one row per idempotency key)
and ``fleet_raw`` (one row per execution, with its pid, start and end). From these:

* ``lost`` — runs that did not complete with the result of a crash-free run;
* ``dedup_keys`` — the effects as a deduplicating service applied them;
* ``overlaps`` — pairs of executions of one step that may have run at the same time:
  the later one started before the earlier one ended (or, for an execution whose worker
  was killed before it ended, before the kill was sent);
* ``takeovers`` — for each run a killed worker held, how long after the kill another
  worker claimed it (from the journal's ``run_claimed`` events).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import fleet_app
import psycopg

from stalwart import Runtime

LEDGER_TABLES = (
    "CREATE TABLE IF NOT EXISTS fleet_dedup (key TEXT PRIMARY KEY, pid INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fleet_raw (execution TEXT PRIMARY KEY, key TEXT NOT NULL, "
    "pid INTEGER NOT NULL, started_at DOUBLE PRECISION NOT NULL, "
    "ended_at DOUBLE PRECISION)",
)


@dataclass(frozen=True)
class Execution:
    key: str
    pid: int
    started_at: float
    ended_at: float | None


def create_ledgers(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in LEDGER_TABLES:
            conn.execute(stmt)


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(sql).fetchall()


def count_completed(url: str) -> int:
    try:
        rows = query(url, "SELECT count(*) FROM stalwart_runs WHERE status = 'completed'")
    except psycopg.OperationalError:  # the server is restarting
        return -1
    return int(rows[0][0])


def lost(url: str, expected: dict[str, int]) -> list[str]:
    """Run ids that are not completed with their expected result."""
    got = {rid: (status, result) for rid, status, result in query(
        url, "SELECT run_id, status, result FROM stalwart_runs")}
    return sorted(rid for rid, want in expected.items()
                  if got.get(rid, ("missing", None))[0] != "completed"
                  or json.loads(got[rid][1] or "null") != want)


def dedup_keys(url: str) -> list[str]:
    return [r[0] for r in query(url, "SELECT key FROM fleet_dedup")]


def executions(url: str) -> dict[str, list[Execution]]:
    """Every execution of every step, by idempotency key, in start order."""
    out: dict[str, list[Execution]] = defaultdict(list)
    for key, pid, started, ended in query(
            url, "SELECT key, pid, started_at, ended_at FROM fleet_raw ORDER BY started_at"):
        out[key].append(Execution(key, pid, started, ended))
    return out


def overlaps(by_key: dict[str, list[Execution]],
             killed: dict[int, float]) -> list[tuple[Execution, Execution]]:
    """Consecutive executions of one step that may have overlapped (see module doc)."""
    bad = []
    for runs in by_key.values():
        for earlier, later in itertools.pairwise(runs):
            end = earlier.ended_at if earlier.ended_at is not None else killed.get(
                earlier.pid, float("inf"))
            if later.started_at < end:
                bad.append((earlier, later))
    return bad


async def wait_for_completed(url: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (done := await asyncio.to_thread(count_completed, url)) < n:
        assert time.monotonic() < deadline, f"only {done}/{n} runs completed in {timeout}s"
        await asyncio.sleep(0.1)


async def enqueue(url: str, seeds: range) -> dict[str, int]:
    """Start a ``chain`` run per seed (from a client that executes nothing)."""
    expected = {f"run-{i:04d}": fleet_app.expected(i) for i in seeds}
    async with Runtime(url, worker=False) as client:
        ids = list(expected)
        for at in range(0, len(ids), 100):
            await asyncio.gather(*(client.start(fleet_app.chain, int(rid[4:]), run_id=rid)
                                   for rid in ids[at:at + 100]))
    return expected



def takeovers(url: str, sent: dict[int, float], reaped: dict[int, float]) -> list[float]:
    """For each run a killed worker held when it was killed (its claim came before the
    kill was sent, and neither an ending nor another claim came between), the seconds
    from its death (``reaped``) to the claim that took it over."""
    history: dict[str, list[tuple[float, str, int | None]]] = defaultdict(list)
    for run_id, kind, at, payload in query(
            url, "SELECT run_id, kind, created_at, payload FROM stalwart_events WHERE kind "
                 "IN ('run_claimed', 'run_completed', 'run_failed', 'run_suspended', "
                 "'run_dead_lettered', 'run_cancelled') ORDER BY run_id, seq"):
        pid = json.loads(payload)["pid"] if kind == "run_claimed" else None
        history[run_id].append((at, kind, pid))
    out = []
    for events in history.values():
        for (at, kind, pid), after in itertools.pairwise(events):
            if kind != "run_claimed" or pid not in sent or at >= sent[pid]:
                continue
            next_at, next_kind, _ = after
            if next_at < sent[pid] or next_kind != "run_claimed":
                continue  # it ended, parked or moved on before the kill
            out.append(max(0.0, next_at - reaped[pid]))
    return out

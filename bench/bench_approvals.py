"""The approvals listing (``Runtime.approvals()``, the dashboard's inbox, ``stalwart
approvals``) over many waiting runs: through the store's index of approval events, beside
the full scan it replaced and a floor, measured in the same run.

    python bench/bench_approvals.py                      # 2,000 runs x ~50 events
    python bench/bench_approvals.py --runs 500 --events 200 --pg-url ''   # SQLite only

Journal: ``--runs`` runs parked (WAITING), each with ``--events`` events (created,
claimed, steps with ~200-character results, then one approval asked: pending), written
through the store as the engine writes them.

FLOOR  the unfinished runs' rows (``list_runs`` of PENDING, RUNNING and WAITING): what
       any listing reads before it looks at a journal.
INDEX  ``Runtime.approvals()``: the approval events of those runs, through the index.
SCAN   the listing as it was: for each run, its queued signals and its whole journal
       (``load_events``: every event read and hash-checked), then the same pure rule.

Each figure is the median of ``--repeat`` listings. Both listings must give the same
answers (every run's approval, pending); the exit status is 1 when they differ or when
INDEX is not at least ``--target`` times faster than SCAN (5 by default: SCAN grows
with the events of each journal, INDEX does not, so the ratio grows with ``--events``).

PostgreSQL runs too, in a schema the benchmark creates (and drops) in the database of
``--pg-url`` (default ``$STALWART_TEST_POSTGRES_URL``; ``''``: SQLite only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import stalwart as sw
from stalwart.engine._approval import ApprovalRequest, approval_token, waiting
from stalwart.store import EventKind, Finish, NewEvent, Owner, RunStatus, Store
from stalwart.testing import postgres_schema

UNFINISHED = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING)
T0 = 1_700_000_000.0


def journal_of(run_id: str, events: int) -> list[NewEvent]:
    """What a run appends before it parks: steps, then one approval asked."""
    steps = [NewEvent(EventKind.STEP_COMPLETED, str(i), "work",
                      json.dumps({"i": i, "text": f"result {i} of {run_id} " + "x" * 170}))
             for i in range(max(events - 3, 0))]
    step_id = str(len(steps))
    payload = {"run": run_id, "amount": len(run_id)}
    token = approval_token(run_id, step_id, json.dumps(payload))
    return [*steps, NewEvent(EventKind.SIGNAL_WAIT_STARTED, step_id, "approval:refund",
                             json.dumps({"deadline": None, "approval": "refund",
                                         "token": token, "payload": payload}))]


async def fill(store: Store, runs: int, events: int) -> None:
    """``runs`` waiting runs, 200 at a time (concurrent writes share commits)."""
    owner = Owner(id="bench", host="bench", pid=os.getpid())
    for start in range(0, runs, 200):
        ids = [f"r{i:06d}" for i in range(start, min(runs, start + 200))]
        await asyncio.gather(*(store.create_run(run_id=rid, workflow="refund", input="[]",
                                                now=T0 + i / 1000)
                               for i, rid in enumerate(ids, start)))
        leases = await store.claim(owner, now=T0, lease_seconds=3600, limit=len(ids))
        await asyncio.gather(*(store.append(lease, journal_of(lease.run_id, events), now=T0,
                                            finish=Finish(RunStatus.WAITING))
                               for lease in leases))


async def floor(app: sw.Runtime) -> list[str]:
    return [rec.run_id for status in UNFINISHED
            for rec in await app.store.list_runs(status=status, limit=1_000_000)]


async def scan(app: sw.Runtime) -> list[ApprovalRequest]:
    """The full scan ``Runtime.approvals()`` did: whole journals, one run at a time."""
    out: list[ApprovalRequest] = []
    for run_id in await floor(app):
        queued = [name for name, _ in await app.store.pending_signals(run_id)]
        out += waiting(run_id, await app.store.load_events(run_id), queued)
    return sorted(out, key=lambda r: r.requested_at)


async def median_ms(fn: Callable[[], Awaitable[object]], repeat: int) -> float:
    await fn()  # warm
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def measure(name: str, url: str, args: argparse.Namespace) -> bool:
    store: Store
    if url.startswith("postgresql://"):
        from stalwart.store._postgres import PostgresStore

        store = PostgresStore(url)
    else:
        store = sw.SQLiteStore(url)
    await store.open()
    started = time.perf_counter()
    try:
        await fill(store, args.runs, args.events)
    finally:
        await store.close()
    filled = time.perf_counter() - started
    async with sw.Runtime(url, worker=False) as app:
        new, old = await app.approvals(limit=1_000_000), await scan(app)
        same = new == old and len(new) == args.runs and all(r.pending for r in new)
        n_events = len(await app.store.load_events("r000000"))
        figures = {
            "FLOOR": await median_ms(lambda: floor(app), args.repeat),
            "INDEX": await median_ms(lambda: app.approvals(limit=1_000_000), args.repeat),
            "SCAN": await median_ms(lambda: scan(app), args.repeat),
        }
    base = figures["FLOOR"]
    speedup = figures["SCAN"] / figures["INDEX"]
    ok = same and speedup >= args.target
    print(f"\n{name}: {args.runs:,} waiting runs x {n_events} events, one approval each "
          f"(filled in {filled:.1f}s)")
    print(f"         {'listing':<52}{'ms':>9}{'x floor':>9}")
    rows = {
        "FLOOR": "the unfinished runs' rows (list_runs x 3)",
        "INDEX": "Runtime.approvals(): approval events via the index",
        "SCAN": "the old full scan: every whole journal + queue",
    }
    for key, what in rows.items():
        print(f"  {key:<7}{what:<52}{figures[key]:>9.1f}{figures[key] / base:>9.2f}")
    print(f"  SCAN / INDEX = {speedup:.1f}x (target >= {args.target:g}x: "
          f"{'ok' if speedup >= args.target else 'MISSED'}); same answers: "
          f"{'yes' if same else 'NO'} ({len(new)} pending)")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--target", type=float, default=5.0)
    parser.add_argument("--pg-url", default=os.environ.get("STALWART_TEST_POSTGRES_URL", ""))
    args = parser.parse_args()
    print(f"stalwart bench_approvals  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  "
          f"{platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}  "
          f"(median of {args.repeat})")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        ok &= asyncio.run(measure("SQLite", str(Path(tmp) / "journal.db"), args))
    if args.pg_url:
        with postgres_schema(args.pg_url, prefix="bench_approvals") as url:
            ok &= asyncio.run(measure("PostgreSQL", url, args))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

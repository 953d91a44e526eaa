"""The core benchmark: durable steps per second against raw SQLite, in one run.

    python bench/bench_core.py [--synchronous FULL|NORMAL|both] [--repeat N] [--dir DIR]

For each ``synchronous`` setting it measures, on fresh files in a temporary folder:

FLOOR  raw ``sqlite3``: one ~200-byte row per transaction (``BEGIN IMMEDIATE``/``COMMIT``),
       WAL, the same ``synchronous`` as the store — the cost of making one thing durable.
W1     one workflow of 2,000 sequential trivial steps; each step is committed before the
       next one starts, so W1 cannot beat the floor (target: >= 0.25 x floor).
W2     500 concurrent workflows x 5 steps, ``Runtime(concurrency=500)``, timed from the
       first ``start`` to the last result; group commit lets concurrent runs share a
       commit (target: >= 1.0 x floor).

Each measurement is repeated (``--repeat``, default 3, fresh files each time) and the
best is kept, as ``timeit`` does: on a shared machine the slow runs measure neighbours.
Ratios, not seconds, are the result: the floor is measured in the same run on the same
disk, so the ratios travel between machines (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from stalwart import Context, Runtime, SQLiteStore, Workflow

Sync = Literal["FULL", "NORMAL"]

W1_STEPS = 2_000
W2_RUNS = 500
W2_STEPS = 5
ROW = "x" * 200


@dataclass(frozen=True)
class Result:
    name: str
    what: str
    steps: int
    seconds: float
    commits: int | None = None
    target: float | None = None

    @property
    def rate(self) -> float:
        return self.steps / self.seconds


# -- the floor -----------------------------------------------------------------------


def floor(path: Path, synchronous: Sync, rows: int) -> Result:
    """Raw sqlite3: one row per BEGIN IMMEDIATE/COMMIT, WAL, ``synchronous`` as given."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, "
                     "payload TEXT NOT NULL, PRIMARY KEY (run_id, seq)) WITHOUT ROWID")
        t0 = time.perf_counter()
        for i in range(rows):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO events VALUES (?, ?, ?)", ("floor", i, ROW))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
    return Result("FLOOR", "raw sqlite3, 1 row (~200 B) per txn", rows, elapsed, rows)


# -- the workloads -------------------------------------------------------------------


async def trivial(i: int) -> int:
    return i


async def _sequential(ctx: Context, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.step(trivial, i)
    return total


sequential = Workflow(_sequential, name="bench.sequential")


async def w1(path: Path, synchronous: Sync) -> Result:
    store = SQLiteStore(path, synchronous=synchronous)
    app = Runtime(store)
    try:
        await app.open()
        before = store.commits
        t0 = time.perf_counter()
        total = await app.run(sequential, W1_STEPS)
        elapsed = time.perf_counter() - t0
        commits = store.commits - before
    finally:
        await app.close()
    assert total == W1_STEPS * (W1_STEPS - 1) // 2
    # every step durable before the next starts: at least one commit per step
    assert commits >= W1_STEPS, commits
    return Result("W1", f"1 workflow x {W1_STEPS:,} sequential steps", W1_STEPS, elapsed,
                  commits, 0.25)


async def w2(path: Path, synchronous: Sync) -> Result:
    store = SQLiteStore(path, synchronous=synchronous)
    app = Runtime(store, concurrency=W2_RUNS)
    try:
        await app.open()
        before = store.commits
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(app.start(sequential, W2_STEPS)
                                         for _ in range(W2_RUNS)))
        totals = await asyncio.gather(*(h.result() for h in handles))
        elapsed = time.perf_counter() - t0
        commits = store.commits - before
    finally:
        await app.close()
    assert totals == [W2_STEPS * (W2_STEPS - 1) // 2] * W2_RUNS
    return Result("W2", f"{W2_RUNS} workflows x {W2_STEPS} steps, concurrency={W2_RUNS}",
                  W2_RUNS * W2_STEPS, elapsed, commits, 1.0)


# -- reporting -----------------------------------------------------------------------


def table(synchronous: Sync, results: list[Result]) -> str:
    base = results[0].rate
    lines = [
        f"synchronous={synchronous} (WAL)",
        f"  {'':5}  {'workload':44} {'steps':>6} {'steps/s':>9} {'x floor':>8}  "
        f"{'target':11} {'commits':>7}",
    ]
    for r in results:
        ratio = r.rate / base
        target = "" if r.target is None else (
            f">={r.target:.2f} {'ok' if ratio >= r.target else 'MISS'}")
        lines.append(
            f"  {r.name:5}  {r.what:44} {r.steps:>6} {r.rate:>9,.0f} {ratio:>8.2f}  "
            f"{target:11} {r.commits if r.commits is not None else '':>7}")
    return "\n".join(lines)


def header() -> str:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"stalwart bench_core  {now}  {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}")


async def measure(folder: Path, synchronous: Sync, repeat: int) -> list[Result]:
    """Floor, W1 and W2, interleaved ``repeat`` times; the best of each."""
    tag = synchronous.lower()
    best: dict[str, Result] = {}
    for i in range(repeat):
        for r in (floor(folder / f"floor-{tag}-{i}.db", synchronous, W1_STEPS),
                  await w1(folder / f"w1-{tag}-{i}.db", synchronous),
                  await w2(folder / f"w2-{tag}-{i}.db", synchronous)):
            if r.name not in best or r.rate > best[r.name].rate:
                best[r.name] = r
    return list(best.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL", "both"], default="both",
                        type=str.upper, help="the SQLite synchronous setting(s) to measure")
    parser.add_argument("--repeat", type=int, default=3,
                        help="measure each workload N times and keep the best (default 3)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to put the fresh database files (default: a temp dir)")
    args = parser.parse_args(argv)
    settings: list[Sync] = ["FULL", "NORMAL"] if args.synchronous == "BOTH" else [
        args.synchronous]
    print(header() + f"  (best of {max(1, args.repeat)})")
    missed = False
    with tempfile.TemporaryDirectory(prefix="stalwart-bench-", dir=args.dir) as tmp:
        for synchronous in settings:
            results = asyncio.run(measure(Path(tmp), synchronous, max(1, args.repeat)))
            print()
            print(table(synchronous, results), flush=True)
            missed |= any(r.target is not None and r.rate / results[0].rate < r.target
                          for r in results)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

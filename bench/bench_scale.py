"""The scaling benchmark: one workload on 1, 2 and 4 worker processes on PostgreSQL, and
on SQLite, against raw-insert floors measured in the same run.

    python bench/bench_scale.py [--pg-url URL] [--runs N] [--repeat N]

W2-style workload: ``--runs`` (default 500) workflows x 5 trivial steps, all started at
once by a client process that executes nothing, timed from the first ``start`` until
the last run has completed. On PostgreSQL the runs are executed by ``stalwart worker``
processes (the real command), each with ``concurrency = runs / workers`` so that every
configuration can hold the same number of runs in flight; on SQLite by one in-process
``Runtime(concurrency=runs)`` (its default ``synchronous=FULL``).

FLOOR  PostgreSQL: raw psycopg, one ~200-byte row per transaction on one connection (the
       cost of making one thing durable there); SQLite: raw ``sqlite3``, one row per
       ``BEGIN IMMEDIATE``/``COMMIT``, WAL, ``synchronous=FULL``.

Printed per row: runs/s, steps/s, the ratio to one PostgreSQL worker and to the floor of
its store, and the step latency p50/p99 — for each completed step, the time from the
run's previous journal event (its claim or the previous step) to this step's outcome,
read from the journal's timestamps. Each configuration runs ``--repeat`` times (default
2, fresh schema or file each time) and the best is kept. PostgreSQL is read from
``--pg-url``, else ``$STALWART_TEST_POSTGRES_URL``, else the local server.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from stalwart import Context, Runtime, SQLiteStore, Workflow

HERE = Path(__file__).parent
STEPS = 5
ROW = "x" * 200
FLOOR_ROWS = 2_000


async def trivial(i: int) -> int:
    return i


async def _five(ctx: Context, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.step(trivial, i)
    return total


five = Workflow(_five, name="bench.scale.five")


@dataclass(frozen=True)
class Row:
    name: str
    workers: int | None
    runs: int
    steps: int
    seconds: float
    latencies: tuple[float, ...] = ()

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seconds

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds

    def pct(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def step_latencies(events: list[tuple[str, int, str, float]]) -> tuple[float, ...]:
    """Per completed step: seconds since the run's previous claim or step outcome."""
    out: list[float] = []
    last: dict[str, float] = {}
    for run_id, _seq, kind, at in events:
        if kind == "step_completed" and run_id in last:
            out.append(at - last[run_id])
        if kind in ("run_claimed", "step_completed"):
            last[run_id] = at
    return tuple(out)


# -- PostgreSQL ----------------------------------------------------------------------


def with_search_path(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    import psycopg

    schema = f"bench_scale_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def pg_floor(url: str) -> Row:
    import psycopg

    with fresh_schema(url) as u, psycopg.connect(u, autocommit=True) as conn:
        conn.execute("CREATE TABLE floor (run_id TEXT NOT NULL, seq INTEGER NOT NULL, "
                     "payload TEXT NOT NULL, PRIMARY KEY (run_id, seq))")
        t0 = time.perf_counter()
        for i in range(FLOOR_ROWS):
            conn.execute("INSERT INTO floor VALUES (%s, %s, %s)", ("floor", i, ROW))
        elapsed = time.perf_counter() - t0
    return Row("FLOOR postgres", None, FLOOR_ROWS, FLOOR_ROWS, elapsed)


def _query(url: str, sql: str) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def spawn_worker(url: str, concurrency: int) -> subprocess.Popen[bytes]:
    """A ``stalwart worker`` process serving this module's workflow."""
    return subprocess.Popen(
        [sys.executable, "-m", "stalwart.cli", "worker", "--store", url,
         "--import", "bench_scale", "--concurrency", str(concurrency), "--grace", "5"],
        cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def pg_workload(url: str, workers: int, runs: int) -> Row:
    import psycopg

    with fresh_schema(url) as u:
        async with Runtime(u, worker=False) as client:  # creates the tables
            procs = [spawn_worker(u, max(1, runs // workers)) for _ in range(workers)]
            try:
                while len(await client.store.list_workers(since=0)) < workers:
                    if any(p.poll() is not None for p in procs):
                        raise RuntimeError("a worker exited: " + b"".join(
                            p.stderr.read() for p in procs if p.stderr).decode())
                    await asyncio.sleep(0.05)
                async with await psycopg.AsyncConnection.connect(u, autocommit=True) as conn:
                    t0 = time.perf_counter()
                    await asyncio.gather(*(client.start(five, STEPS) for _ in range(runs)))
                    while True:
                        cur = await conn.execute("SELECT count(*) FROM stalwart_runs "
                                                 "WHERE status = 'completed'")
                        row = await cur.fetchone()
                        if row is not None and row[0] >= runs:
                            break
                        await asyncio.sleep(0.005)
                    elapsed = time.perf_counter() - t0
            finally:
                for p in procs:
                    p.send_signal(signal.SIGTERM)
                for p in procs:
                    p.wait(timeout=60)
        events = _query(u, "SELECT run_id, seq, kind, created_at FROM stalwart_events "
                           "ORDER BY run_id, seq")
    return Row(f"postgres {workers} worker{'s' if workers > 1 else ''}", workers, runs,
               runs * STEPS, elapsed, step_latencies(events))  # type: ignore[arg-type]


# -- SQLite --------------------------------------------------------------------------


def sqlite_floor(path: Path) -> Row:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE floor (run_id TEXT NOT NULL, seq INTEGER NOT NULL, "
                     "payload TEXT NOT NULL, PRIMARY KEY (run_id, seq)) WITHOUT ROWID")
        t0 = time.perf_counter()
        for i in range(FLOOR_ROWS):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO floor VALUES (?, ?, ?)", ("floor", i, ROW))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
    return Row("FLOOR sqlite", None, FLOOR_ROWS, FLOOR_ROWS, elapsed)


async def sqlite_workload(path: Path, runs: int) -> Row:
    app = Runtime(SQLiteStore(path), concurrency=runs)
    try:
        await app.open()
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(app.start(five, STEPS) for _ in range(runs)))
        await asyncio.gather(*(h.result() for h in handles))
        elapsed = time.perf_counter() - t0
    finally:
        await app.close()
    conn = sqlite3.connect(path)
    try:
        events = conn.execute("SELECT run_id, seq, kind, created_at FROM events "
                              "ORDER BY run_id, seq").fetchall()
    finally:
        conn.close()
    return Row("sqlite 1 process", 1, runs, runs * STEPS, elapsed, step_latencies(events))


# -- reporting -----------------------------------------------------------------------


def header(pg_version: str) -> str:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"stalwart bench_scale  {now}  {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, PostgreSQL {pg_version}, "
            f"SQLite {sqlite3.sqlite_version}")


def ms(x: float | None) -> str:
    return "" if x is None else f"{x * 1000:.1f}"


def table(rows: list[Row]) -> str:
    one = next(r for r in rows if r.name == "postgres 1 worker")
    floors = {r.name.split()[1]: r for r in rows if r.name.startswith("FLOOR")}
    lines = [f"  {'':24} {'runs':>5} {'steps':>6} {'runs/s':>8} {'steps/s':>8} "
             f"{'x 1 worker':>10} {'x floor':>8} {'p50 ms':>7} {'p99 ms':>7}"]
    for r in rows:
        floor = floors["postgres" if r.name.startswith(("postgres", "FLOOR postgres"))
                       else "sqlite"]
        vs_one = "" if r.workers is None else f"{r.steps_per_s / one.steps_per_s:.2f}"
        runs = "" if r.workers is None else f"{r.runs}"
        rps = "" if r.workers is None else f"{r.runs_per_s:,.0f}"
        lines.append(
            f"  {r.name:24} {runs:>5} {r.steps:>6} {rps:>8} {r.steps_per_s:>8,.0f} "
            f"{vs_one:>10} {r.steps_per_s / floor.steps_per_s:>8.2f} "
            f"{ms(r.pct(0.50)):>7} {ms(r.pct(0.99)):>7}")
    return "\n".join(lines)


async def measure(pg_url: str, folder: Path, runs: int, repeat: int) -> list[Row]:
    best: dict[str, Row] = {}

    def keep(r: Row) -> None:
        if r.name not in best or r.steps_per_s > best[r.name].steps_per_s:
            best[r.name] = r

    for i in range(repeat):
        keep(pg_floor(pg_url))
        for workers in (1, 2, 4):
            keep(await pg_workload(pg_url, workers, runs))
        keep(sqlite_floor(folder / f"floor-{i}.db"))
        keep(await sqlite_workload(folder / f"w-{i}.db", runs))
    order = ["FLOOR postgres", "postgres 1 worker", "postgres 2 workers",
             "postgres 4 workers", "FLOOR sqlite", "sqlite 1 process"]
    return [best[name] for name in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg-url", default=os.environ.get(
        "STALWART_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to put the SQLite files (default: a temp dir)")
    args = parser.parse_args(argv)
    version = str(_query(args.pg_url, "SHOW server_version")[0][0])
    print(header(version) + f"  (best of {max(1, args.repeat)})")
    print(f"workload: {args.runs} workflows x {STEPS} trivial steps, started at once; "
          "postgres workers are `stalwart worker` processes")
    with tempfile.TemporaryDirectory(prefix="stalwart-bench-", dir=args.dir) as tmp:
        rows = asyncio.run(measure(args.pg_url, Path(tmp), args.runs, max(1, args.repeat)))
    print()
    print(table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

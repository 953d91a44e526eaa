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
2, fresh schema or file each time) and the best is kept.

Cost per step, beside the floor's cost per row:

* ``stmts/step`` — statements the PostgreSQL server executed (every round trip: BEGIN,
  COMMIT and SAVEPOINTs included; the client's run creations and the workers' claims,
  heartbeats and notifications too), counted by ``pg_stat_statements`` from just before
  the first ``start`` to the last completion, divided by the steps. The benchmark's own
  progress queries are left out. The floor executes one INSERT per row.
* ``cpu ms/step`` — CPU time (user + system) of the worker processes over the same
  interval (``/proc/PID/stat``), per step; for SQLite, of the one process; for a
  floor, of the client writing the rows.

``pg_stat_statements`` must be preloaded (``shared_preload_libraries``), which takes a
server restart. The machine's server is shared and is never reconfigured: by default
the PostgreSQL part runs on a throwaway cluster the benchmark starts itself
(``initdb`` + ``pg_ctl`` on a free port, removed afterwards, see ``_pg_cluster.py``).
``--pg-url URL`` runs it on that server instead; statements are then counted only if
its ``pg_stat_statements`` works. The output says which.

The gate: at most ``--max-statements`` (default 3) statements per step for every
PostgreSQL row; the exit status is 1 when a row misses it.
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
from dataclasses import dataclass
from pathlib import Path

from _pg_cluster import NoCluster, throwaway_cluster

from stalwart import Context, Runtime, SQLiteStore, Workflow
from stalwart.testing import postgres_schema

HERE = Path(__file__).parent
STEPS = 5
ROW = "x" * 200
FLOOR_ROWS = 2_000
MONITOR = "/* bench-monitor */ "
"""Marks the benchmark's own queries, which the statement count leaves out."""
TICKS = os.sysconf("SC_CLK_TCK")


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
    statements: int | None = None
    """Statements the server executed for the row (None: not counted)."""
    cpu: float | None = None
    """CPU seconds of the processes that did the work (see the module docstring)."""

    @property
    def statements_per_step(self) -> float | None:
        return None if self.statements is None else self.statements / self.steps

    @property
    def cpu_per_step(self) -> float | None:
        return None if self.cpu is None else self.cpu / self.steps

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


def pg_floor(url: str, counted: bool) -> Row:
    import psycopg

    with (postgres_schema(url, prefix="bench_scale") as u,
          psycopg.connect(u, autocommit=True) as conn):
        conn.execute("CREATE TABLE floor (run_id TEXT NOT NULL, seq INTEGER NOT NULL, "
                     "payload TEXT NOT NULL, PRIMARY KEY (run_id, seq))")
        reset_statements(u, counted)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(FLOOR_ROWS):
            conn.execute("INSERT INTO floor VALUES (%s, %s, %s)", ("floor", i, ROW))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        statements = count_statements(u, counted)
    return Row("FLOOR postgres", None, FLOOR_ROWS, FLOOR_ROWS, elapsed,
               statements=statements, cpu=cpu)


def statements_available(url: str) -> bool:
    """Whether ``pg_stat_statements`` works on this server (created in the database)."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements SCHEMA public")
            conn.execute("SELECT count(*) FROM public.pg_stat_statements")
    except psycopg.Error:
        return False
    return True


def reset_statements(url: str, counted: bool) -> None:
    if counted:
        _query(url, MONITOR + "SELECT public.pg_stat_statements_reset()")


def count_statements(url: str, counted: bool, *, show: int = 0) -> int | None:
    """Statements executed in this database since the reset, the benchmark's own left
    out; with ``show``, print the most frequent ones."""
    if not counted:
        return None
    rows = _query(url, MONITOR + "SELECT calls, query FROM public.pg_stat_statements s "
                  "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database() "
                  "AND query NOT LIKE '%bench-monitor%' ORDER BY calls DESC")
    for calls, query in rows[:show]:
        print(f"      {calls:>7}  {' '.join(str(query).split())[:110]}")
    return sum(int(r[0]) for r in rows)  # type: ignore[call-overload]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by processes ``pids`` (``/proc``)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / TICKS


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


async def pg_workload(url: str, workers: int, runs: int, counted: bool,
                      show: int = 0) -> Row:
    import psycopg

    from stalwart import PostgresStore

    with postgres_schema(url, prefix="bench_scale") as u:
        journal = PostgresStore(u)  # a writer: creates the tables in the empty schema
        await journal.open()
        await journal.close()
        async with Runtime(u, worker=False) as client:
            procs = [spawn_worker(u, max(1, runs // workers)) for _ in range(workers)]
            try:
                while len(await client.store.list_workers(since=0)) < workers:
                    if any(p.poll() is not None for p in procs):
                        raise RuntimeError("a worker exited: " + b"".join(
                            p.stderr.read() for p in procs if p.stderr).decode())
                    await asyncio.sleep(0.05)
                async with await psycopg.AsyncConnection.connect(u, autocommit=True) as conn:
                    pids = [p.pid for p in procs]
                    reset_statements(u, counted)
                    t0, c0 = time.perf_counter(), cpu_seconds(pids)
                    await asyncio.gather(*(client.start(five, STEPS) for _ in range(runs)))
                    while True:
                        cur = await conn.execute(MONITOR + "SELECT count(*) FROM "
                                                 "stalwart_runs WHERE status = 'completed'")
                        row = await cur.fetchone()
                        if row is not None and row[0] >= runs:
                            break
                        await asyncio.sleep(0.005)
                    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pids) - c0
                    statements = count_statements(u, counted, show=show)
            finally:
                for p in procs:
                    p.send_signal(signal.SIGTERM)
                for p in procs:
                    p.wait(timeout=60)
        events = _query(u, "SELECT run_id, seq, kind, created_at FROM stalwart_events "
                           "ORDER BY run_id, seq")
    return Row(f"postgres {workers} worker{'s' if workers > 1 else ''}", workers, runs,
               runs * STEPS, elapsed, step_latencies(events),  # type: ignore[arg-type]
               statements=statements, cpu=cpu)


# -- SQLite --------------------------------------------------------------------------


def sqlite_floor(path: Path) -> Row:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE floor (run_id TEXT NOT NULL, seq INTEGER NOT NULL, "
                     "payload TEXT NOT NULL, PRIMARY KEY (run_id, seq)) WITHOUT ROWID")
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(FLOOR_ROWS):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO floor VALUES (?, ?, ?)", ("floor", i, ROW))
            conn.execute("COMMIT")
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        conn.close()
    return Row("FLOOR sqlite", None, FLOOR_ROWS, FLOOR_ROWS, elapsed, cpu=cpu)


async def sqlite_workload(path: Path, runs: int) -> Row:
    app = Runtime(SQLiteStore(path), concurrency=runs)
    try:
        await app.open()
        t0, c0 = time.perf_counter(), time.process_time()
        handles = await asyncio.gather(*(app.start(five, STEPS) for _ in range(runs)))
        await asyncio.gather(*(h.result() for h in handles))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        await app.close()
    conn = sqlite3.connect(path)
    try:
        events = conn.execute("SELECT run_id, seq, kind, created_at FROM events "
                              "ORDER BY run_id, seq").fetchall()
    finally:
        conn.close()
    return Row("sqlite 1 process", 1, runs, runs * STEPS, elapsed, step_latencies(events),
               cpu=cpu)


# -- reporting -----------------------------------------------------------------------


def header(pg_version: str) -> str:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"stalwart bench_scale  {now}  {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, PostgreSQL {pg_version}, "
            f"SQLite {sqlite3.sqlite_version}")


def ms(x: float | None) -> str:
    return "" if x is None else f"{x * 1000:.1f}"


def per_step(x: float | None, floor: float | None, fmt: str) -> str:
    """``x`` and its ratio to the floor's figure."""
    if x is None:
        return "n/a"
    ratio = f" ({x / floor:.1f}x)" if floor else ""
    return f"{x:{fmt}}{ratio}"


def table(rows: list[Row]) -> str:
    one = next(r for r in rows if r.name == "postgres 1 worker")
    floors = {r.name.split()[1]: r for r in rows if r.name.startswith("FLOOR")}
    lines = [f"  {'':24} {'runs':>5} {'steps':>6} {'runs/s':>8} {'steps/s':>8} "
             f"{'x 1 worker':>10} {'x floor':>8} {'p50 ms':>7} {'p99 ms':>7} "
             f"{'stmts/step (x floor)':>21} {'cpu ms/step (x floor)':>22}"]
    for r in rows:
        floor = floors["postgres" if r.name.startswith(("postgres", "FLOOR postgres"))
                       else "sqlite"]
        vs_one = "" if r.workers is None else f"{r.steps_per_s / one.steps_per_s:.2f}"
        runs = "" if r.workers is None else f"{r.runs}"
        rps = "" if r.workers is None else f"{r.runs_per_s:,.0f}"
        stmts = ("" if r.name.startswith(("sqlite", "FLOOR sqlite"))
                 else per_step(r.statements_per_step, floor.statements_per_step, ".2f"))
        cpu_ms = None if r.cpu_per_step is None else r.cpu_per_step * 1000
        floor_ms = None if floor.cpu_per_step is None else floor.cpu_per_step * 1000
        lines.append(
            f"  {r.name:24} {runs:>5} {r.steps:>6} {rps:>8} {r.steps_per_s:>8,.0f} "
            f"{vs_one:>10} {r.steps_per_s / floor.steps_per_s:>8.2f} "
            f"{ms(r.pct(0.50)):>7} {ms(r.pct(0.99)):>7} {stmts:>21} "
            f"{per_step(cpu_ms, floor_ms, '.3f'):>22}")
    return "\n".join(lines)


async def measure(pg_url: str, folder: Path, runs: int, repeat: int, counted: bool,
                  show: int) -> list[Row]:
    best: dict[str, Row] = {}

    def keep(r: Row) -> None:
        if r.name not in best or r.steps_per_s > best[r.name].steps_per_s:
            best[r.name] = r

    for i in range(repeat):
        keep(pg_floor(pg_url, counted))
        for workers in (1, 2, 4):
            if show:
                print(f"  most frequent statements, {workers} worker(s), round {i + 1}:")
            keep(await pg_workload(pg_url, workers, runs, counted, show))
        keep(sqlite_floor(folder / f"floor-{i}.db"))
        keep(await sqlite_workload(folder / f"w-{i}.db", runs))
    order = ["FLOOR postgres", "postgres 1 worker", "postgres 2 workers",
             "postgres 4 workers", "FLOOR sqlite", "sqlite 1 process"]
    return [best[name] for name in order]


def run(pg_url: str, where: str, args: argparse.Namespace) -> int:
    counted = statements_available(pg_url)
    version = str(_query(pg_url, "SHOW server_version")[0][0])
    print(header(version) + f"  (best of {max(1, args.repeat)})")
    print(f"workload: {args.runs} workflows x {STEPS} trivial steps, started at once; "
          "postgres workers are `stalwart worker` processes")
    print(f"postgres: {where}; statements "
          + ("counted by pg_stat_statements on the server (top-level, utility included)"
             if counted else "NOT counted (pg_stat_statements is not preloaded there)"))
    with tempfile.TemporaryDirectory(prefix="stalwart-bench-", dir=args.dir) as tmp:
        rows = asyncio.run(measure(pg_url, Path(tmp), args.runs, max(1, args.repeat),
                                   counted, args.show))
    print()
    print(table(rows), flush=True)
    missed = [r.name for r in rows if r.workers is not None and r.name.startswith("postgres")
              and r.statements_per_step is not None
              and r.statements_per_step > args.max_statements]
    print()
    if not counted:
        print("statements per step: not measured, no gate")
        return 0
    if missed:
        print(f"MISS: more than {args.max_statements:g} statements per step: "
              + ", ".join(missed))
        return 1
    print(f"ok: at most {args.max_statements:g} statements per step on every PostgreSQL row")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg-url", default=None,
                        help="run the PostgreSQL part on this server (default: a throwaway "
                             "cluster with pg_stat_statements, see the module docstring)")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--max-statements", type=float, default=3.0,
                        help="the gate: statements per step on PostgreSQL (default 3)")
    parser.add_argument("--show", type=int, default=0, metavar="N",
                        help="print the N most frequent statements of each PostgreSQL run")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to put the SQLite files (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.pg_url is not None:
        return run(args.pg_url, f"the server at {args.pg_url}", args)
    try:
        with throwaway_cluster("shared_preload_libraries=pg_stat_statements",
                               "max_connections=200") as url:
            return run(url, "a throwaway cluster started for this run (initdb + pg_ctl, "
                            "pg_stat_statements preloaded)", args)
    except NoCluster as exc:
        sys.exit(f"bench_scale: {exc}; pass --pg-url URL to use an existing server")


if __name__ == "__main__":
    sys.exit(main())

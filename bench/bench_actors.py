"""The actors benchmark: keyed messages through SQLite (one process) and PostgreSQL (one
and four worker processes, four with random SIGKILLs), each beside a floor measured in
the same run; order and exactly-once checked on every row.

    python bench/bench_actors.py [--pg-url URL] [--keys 10] [--messages 1000]

Workload: ``--keys`` instances of a counter actor, ``--messages`` messages each
(``seq`` 0, 1, 2...), sent by a client (one sending task per key, in order; every
fiftieth message sent twice with the same ``message_id``, as a client retrying). The
counter's state proves the outcome: how many messages it applied, the sum of their
``seq``, the last ``seq`` and every one that arrived out of order. A row passes when
every key applied exactly ``--messages`` messages, summing to ``n(n-1)/2``, ending at
``n-1``, none out of order: a message applied twice, lost, or reordered fails it.

Timed from the first send (once the workers have registered) to the last message's
commit (its journal event's time).
On SQLite one in-process runtime sends and executes (``synchronous=FULL``). On
PostgreSQL a client sends and separate ``--worker`` processes execute; in the ``kills``
row a random worker is SIGKILLed every 2-4 s and replaced at once, until every key
is done (a new worker on the same host takes a dead one's instances over at once).

FLOOR  what durably applying one message costs with nothing but the driver: per
       message one transaction that inserts the message row and updates its key's
       state row (raw ``sqlite3`` with ``BEGIN IMMEDIATE``, WAL, ``synchronous=FULL``;
       raw psycopg on one connection), for the same number of messages.

PostgreSQL runs in a database the benchmark creates on the server of ``--pg-url``
(default ``$STALWART_BENCH_POSTGRES_URL``, then ``$STALWART_TEST_POSTGRES_URL``) and
drops afterwards, one fresh database per row. The exit status is 1 when a row fails the
order or exactly-once check (or does not finish within ``--timeout`` seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

import stalwart as sw
from stalwart.store import EventKind

HERE = Path(__file__).resolve()


class Count(BaseModel):
    count: int = 0
    total: int = 0
    last: int = -1
    disorder: list[int] = []


class Msg(BaseModel):
    seq: int


def build(store: str, **kw: object) -> tuple[sw.Runtime, sw.Actor[Count, Msg, int]]:
    app = sw.Runtime(store, poll_interval=0.1, lease_seconds=10.0, **kw)  # type: ignore[arg-type]

    @app.actor(state=Count)
    async def counter(ctx: sw.ActorContext[Count], msg: Msg) -> int:
        if msg.seq != ctx.state.last + 1:
            ctx.state.disorder.append(msg.seq)
        ctx.state.last = msg.seq
        ctx.state.count += 1
        ctx.state.total += msg.seq
        return ctx.state.count

    return app, counter


@dataclass
class Row:
    label: str
    messages: int
    seconds: float
    ok: bool | None = None  # None: a floor
    kills: int = 0
    detail: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


# -- the workload -------------------------------------------------------------------------


async def send_all(app: sw.Runtime, counter: sw.Actor[Count, Msg, int], keys: list[str],
                   n: int) -> None:
    async def one(key: str) -> None:
        for i in range(n):
            await app.send(counter, key, Msg(seq=i), message_id=f"{key}-{i}")
            if i % 50 == 7:
                await app.send(counter, key, Msg(seq=i), message_id=f"{key}-{i}")

    await asyncio.gather(*(one(key) for key in keys))


def progress_query(table: str) -> str:
    """The benchmark's own monitor query: commits per instance, read from the journal's
    table directly (``actor_state`` reads and verifies a whole journal: polling it would
    cost more than the work it watches)."""
    return (f"SELECT run_id, count(*) FROM {table} WHERE kind = 'step_completed' "
            "AND name = 'actor:counter.commit' GROUP BY run_id")


def commits_sqlite(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(conn.execute(progress_query("events")).fetchall())
    finally:
        conn.close()


def commits_postgres(url: str) -> dict[str, int]:
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            return dict(conn.execute(progress_query("stalwart_events")).fetchall())
    except psycopg.errors.UndefinedTable:
        return {}


async def finished(app: sw.Runtime, counter: sw.Actor[Count, Msg, int], keys: list[str],
                   n: int, timeout: float, commits: Callable[[], dict[str, int]], *,
                   tick: Callable[[], None] | None = None) -> tuple[dict[str, Count], float]:
    """Wait until every key committed ``n`` messages (or ``timeout``); the states and
    the time of the last commit among them (from the journal)."""
    deadline = time.monotonic() + timeout
    while True:
        done = await asyncio.to_thread(commits)
        if all(done.get(f"actor:counter:{key}", 0) >= n for key in keys):
            break
        if time.monotonic() > deadline:
            break
        if tick is not None:
            tick()
        await asyncio.sleep(0.2)
    states: dict[str, Count] = {}
    last = 0.0
    commit = f"actor:{counter.name}.commit"
    for key in keys:
        states[key] = await app.actor_state(counter, key)
        events = await app.events(f"actor:{counter.name}:{key}")
        times = [e.created_at for e in events
                 if e.kind == EventKind.STEP_COMPLETED and e.name == commit]
        last = max([last, *times])
    return states, last


def check(states: dict[str, Count], keys: list[str], n: int) -> tuple[bool, str]:
    bad = []
    for key in keys:
        s = states.get(key, Count())
        if not (s.count == n and s.total == n * (n - 1) // 2 and s.last == n - 1
                and not s.disorder):
            bad.append(f"{key}: count {s.count} sum {s.total} last {s.last} "
                       f"out of order {s.disorder[:5]}")
    counts = sorted({s.count for s in states.values()})
    return not bad, "; ".join(bad) if bad else f"counts {counts} (each key exact, in order)"


async def sqlite_row(folder: Path, keys: list[str], n: int, timeout: float) -> Row:
    app, counter = build(str(folder / "actors.db"))
    async with app:
        t0 = time.time()
        await send_all(app, counter, keys, n)
        states, last = await finished(app, counter, keys, n, timeout,
                                      lambda: commits_sqlite(folder / "actors.db"))
    ok, detail = check(states, keys, n)
    return Row("sqlite 1 process", n * len(keys), last - t0, ok, detail=detail)


def spawn_worker(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(HERE), "--worker", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


async def postgres_row(url: str, workers: int, kills: bool, keys: list[str], n: int,
                       timeout: float, rng: random.Random) -> Row:
    procs = [spawn_worker(url) for _ in range(workers)]
    killed = 0
    next_kill = time.monotonic() + rng.uniform(2.0, 4.0)

    def maybe_kill() -> None:
        nonlocal killed, next_kill
        if kills and time.monotonic() >= next_kill:
            victim = rng.randrange(len(procs))
            kill(procs[victim])
            procs[victim] = spawn_worker(url)
            killed += 1
            next_kill = time.monotonic() + rng.uniform(2.0, 4.0)

    app, counter = build(url, worker=False)
    try:
        async with app:
            await ready(app, workers)
            t0 = time.time()
            sending = asyncio.ensure_future(send_all(app, counter, keys, n))
            while not sending.done():
                maybe_kill()
                await asyncio.wait([sending], timeout=0.1)
            await sending
            states, last = await finished(app, counter, keys, n, timeout,
                                          lambda: commits_postgres(url), tick=maybe_kill)
    finally:
        for proc in procs:
            kill(proc)
    ok, detail = check(states, keys, n)
    label = f"postgres {workers} worker{'s' if workers > 1 else ''}"
    return Row(label + (" + SIGKILLs" if kills else ""), n * len(keys), last - t0, ok,
               kills=killed, detail=detail)


async def ready(app: sw.Runtime, workers: int) -> None:
    """Wait until ``workers`` worker processes have registered (imported and started):
    their start-up is not what the row measures."""
    since = time.time()
    while True:
        try:
            found = [w for w in await app.store.list_workers(since=since - 1)
                     if w.stopped_at is None]
        except sw.NotAStalwartStoreError:  # the first worker has not made the journal yet
            found = []
        if len(found) >= workers:
            return
        await asyncio.sleep(0.1)


# -- floors -------------------------------------------------------------------------------


def sqlite_floor(folder: Path, keys: list[str], n: int) -> Row:
    conn = sqlite3.connect(folder / "floor.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE messages (id TEXT PRIMARY KEY, key TEXT, body TEXT)")
        conn.execute("CREATE TABLE state (key TEXT PRIMARY KEY, count INTEGER)")
        conn.executemany("INSERT INTO state VALUES (?, 0)", [(k,) for k in keys])
        t0 = time.perf_counter()
        for i in range(n):
            for key in keys:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO messages VALUES (?, ?, ?)",
                             (f"{key}-{i}", key, f'{{"seq":{i}}}'))
                conn.execute("UPDATE state SET count = count + 1 WHERE key = ?", (key,))
                conn.execute("COMMIT")
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
    return Row("FLOOR sqlite", n * len(keys), elapsed)


def postgres_floor(url: str, keys: list[str], n: int) -> Row:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE messages (id TEXT PRIMARY KEY, key TEXT, body TEXT)")
        conn.execute("CREATE TABLE state (key TEXT PRIMARY KEY, count INTEGER)")
        for key in keys:
            conn.execute("INSERT INTO state VALUES (%s, 0)", (key,))
        t0 = time.perf_counter()
        for i in range(n):
            for key in keys:
                with conn.transaction():
                    conn.execute("INSERT INTO messages VALUES (%s, %s, %s)",
                                 (f"{key}-{i}", key, f'{{"seq":{i}}}'))
                    conn.execute("UPDATE state SET count = count + 1 WHERE key = %s", (key,))
        elapsed = time.perf_counter() - t0
    return Row("FLOOR postgres", n * len(keys), elapsed)


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A database of its own on ``url``'s server, dropped afterwards."""
    import psycopg

    name = f"stalwart_bench_actors_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the report ---------------------------------------------------------------------------


HEADER = (f"  {'':34} {'messages':>8} {'seconds':>8} {'msgs/s':>8} {'x floor':>8} "
          f"{'kills':>5}  order and exactly-once")


def show(row: Row, floor: Row | None) -> None:
    """Print one row as soon as it is measured (a figure beside its store's floor)."""
    if row.ok is None:
        print(f"  {row.label:34} {row.messages:8} {row.seconds:8.2f} {row.rate:8,.0f} "
              f"{1.0:8.2f}", flush=True)
        return
    ratio = row.rate / floor.rate if floor else float("nan")
    verdict = "ok" if row.ok else "FAILED"
    print(f"  {row.label:34} {row.messages:8} {row.seconds:8.2f} {row.rate:8,.0f} "
          f"{ratio:8.2f} {row.kills:5}  {verdict}: {row.detail}", flush=True)


async def _worker(url: str) -> None:
    app, _ = build(url)
    async with app:
        await asyncio.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-url", default=os.environ.get(
        "STALWART_BENCH_POSTGRES_URL", os.environ.get("STALWART_TEST_POSTGRES_URL")))
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(_worker(args.worker))
        return 0
    keys, n = [f"k{i}" for i in range(args.keys)], args.messages
    rng = random.Random(args.seed)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"stalwart bench_actors  {now}  {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}", flush=True)
    print(f"workload: {args.keys} keys x {n} messages (every 50th sent twice, same id); "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print(HEADER, flush=True)
    rows: list[Row] = []

    def add(row: Row, floor: Row | None = None) -> Row:
        rows.append(row)
        show(row, floor)
        return row

    with tempfile.TemporaryDirectory() as tmp:
        floor = add(sqlite_floor(Path(tmp), keys, n))
        add(asyncio.run(sqlite_row(Path(tmp), keys, n, args.timeout)), floor)
    if args.pg_url:
        with fresh_database(args.pg_url) as url:
            floor = add(postgres_floor(url, keys, n))
        for workers, kills in ((1, False), (4, False), (4, True)):
            with fresh_database(args.pg_url) as url:
                add(asyncio.run(postgres_row(url, workers, kills, keys, n, args.timeout,
                                             rng)), floor)
    else:
        print("  (PostgreSQL skipped: no --pg-url and no $STALWART_BENCH_POSTGRES_URL)")
    failed = [row.label for row in rows if row.ok is False]
    if failed:
        print(f"FAILED (order or exactly-once): {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

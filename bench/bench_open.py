"""What opening an SQLite journal costs, small and large, beside SQLite's own checks.

    python bench/bench_open.py [--runs 100000] [--repeat 5]

Every CLI command, the dashboard and every runtime open the journal. Builds two journals
in a temporary folder (1,000 runs and ``--runs`` runs, 5 events each) and times, best of
``--repeat``:

FLOOR   raw ``sqlite3``: connect read-only and read the ``stalwart_meta`` table (what any
        open must do to know the file is a journal).
open    ``SQLiteStore(access="read").open()`` and ``(access="write")``: the header, the
        schema, the WAL's checksums; a writer then checks the whole file in the
        background (``Verifier``), timed apart as ``background check``.
lookup  ``get_run`` of one run (the lookup checked against the events table).
for reference: ``PRAGMA quick_check`` and ``PRAGMA integrity_check`` of the whole file,
        which an open ran before (``stalwart doctor`` still does).

Gates (exit 1 when missed): a reader's open of the large journal takes at most 100 ms,
and at most 3 times the small journal's (an open must not grow with the journal).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from stalwart.store import EventKind, NewEvent, SQLiteStore

GATE_MS = 100.0
GATE_GROWTH = 3.0


async def build(path: Path, runs: int) -> None:
    store = SQLiteStore(path, synchronous="NORMAL")
    await store.open()
    try:
        for base in range(0, runs, 2000):
            await asyncio.gather(*(store.create_run(
                run_id=f"run-{i:06d}", workflow="bench.wf", input='[1, "an input"]',
                now=1e9 + i, events=[NewEvent(EventKind.STEP_COMPLETED, step_id=str(k),
                                              name="step", payload='"' + "x" * 80 + '"')
                                     for k in range(4)])
                for i in range(base, min(runs, base + 2000))))
    finally:
        await store.close()


def best(fn: Callable[[], float], repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def floor(path: Path) -> float:
    t0 = time.perf_counter()
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    conn.execute("SELECT key, value FROM stalwart_meta").fetchall()
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def pragma(path: Path, sql: str) -> float:
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    conn.execute("SELECT 1").fetchall()
    t0 = time.perf_counter()
    conn.execute(sql).fetchall()
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def timed(coro: Callable[[], Awaitable[float]]) -> Callable[[], float]:
    return lambda: asyncio.run(coro())


def open_store(path: Path, access: str) -> Callable[[], Awaitable[float]]:
    async def once() -> float:
        store = SQLiteStore(path, access=access)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        await store.open()
        elapsed = time.perf_counter() - t0
        await store.close()
        return elapsed
    return once


def background_check(path: Path) -> Callable[[], Awaitable[float]]:
    async def once() -> float:
        store = SQLiteStore(path)
        t0 = time.perf_counter()
        await store.open()
        damage = await store.verified()
        elapsed = time.perf_counter() - t0
        await store.close()
        assert damage is None
        return elapsed
    return once


def lookup(path: Path, run_id: str) -> Callable[[], Awaitable[float]]:
    async def once() -> float:
        store = SQLiteStore(path, access="read")
        await store.open()
        t0 = time.perf_counter()
        rec = await store.get_run(run_id)
        elapsed = time.perf_counter() - t0
        await store.close()
        assert rec is not None
        return elapsed
    return once


def measure(path: Path, runs: int, repeat: int) -> dict[str, float]:
    return {
        "FLOOR raw sqlite3 open + meta": best(lambda: floor(path), repeat),
        "open, reader": best(timed(open_store(path, "read")), repeat),
        "open, writer": best(timed(open_store(path, "write")), repeat),
        "lookup (get_run)": best(timed(lookup(path, f"run-{runs // 2:06d}")), repeat),
        "background check (writer)": best(timed(background_check(path)), repeat),
        "quick_check (reference)": best(lambda: pragma(path, "PRAGMA quick_check(1)"),
                                        repeat),
        "integrity_check (reference)": best(
            lambda: pragma(path, "PRAGMA integrity_check(1)"), repeat),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"stalwart bench_open  {platform.machine()}, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}  (best of {args.repeat})")
    with tempfile.TemporaryDirectory(prefix="stalwart-bench-open-") as tmp:
        small, large = Path(tmp) / "small.db", Path(tmp) / "large.db"
        asyncio.run(build(small, 1000))
        asyncio.run(build(large, args.runs))
        size = large.stat().st_size / 2**20
        rows = {"small": measure(small, 1000, args.repeat),
                "large": measure(large, args.runs, args.repeat)}
    print(f"journals: 1,000 runs and {args.runs:,} runs ({size:.0f} MiB), 5 events each\n")
    print(f"  {'':32} {'1,000 runs':>11} {f'{args.runs:,} runs':>14} {'x floor':>8}")
    for name in rows["small"]:
        s, big = rows["small"][name] * 1000, rows["large"][name] * 1000
        ratio = big / (rows["large"]["FLOOR raw sqlite3 open + meta"] * 1000)
        print(f"  {name:32} {s:>8.1f} ms {big:>11.1f} ms {ratio:>8.1f}")
    reader_big = rows["large"]["open, reader"] * 1000
    growth = rows["large"]["open, reader"] / rows["small"]["open, reader"]
    print(f"\nreader's open of the large journal: {reader_big:.1f} ms (gate {GATE_MS:g} ms), "
          f"{growth:.1f}x the small one's (gate {GATE_GROWTH:g}x)")
    missed = reader_big > GATE_MS or growth > GATE_GROWTH
    print("MISS" if missed else "ok")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

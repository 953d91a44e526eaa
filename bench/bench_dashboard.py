"""The dashboard's runs page over a large journal: each page render beside the store's
own query for the same rows (the floor), measured in the same run.

    python bench/bench_dashboard.py                 # 100,000 runs in a fresh SQLite file
    python bench/bench_dashboard.py --runs 20000 --store postgresql://...  (an empty schema)

Target: every runs page renders (server side, HTML complete) in < 300 ms at 100,000 runs.
Exit 1 when a target is missed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from starlette.testclient import TestClient

from stalwart.cli.dashboard._web import PAGE, Settings, create_app
from stalwart.store import SQLiteStore
from stalwart.store._base import Store

TARGET_MS = 300.0
WORKFLOWS = 5


def _open(url: str) -> Store:
    if url.startswith(("postgresql://", "postgres://")):
        from stalwart.store._postgres import PostgresStore

        return PostgresStore(url)
    return SQLiteStore(url)


async def fill(url: str, runs: int) -> None:
    """``runs`` runs, ``WORKFLOWS`` workflows in turn, one millisecond apart, created
    500 at a time (they share commits)."""
    store = _open(url)
    await store.open()
    t0 = time.time() - runs / 1000
    try:
        for start in range(0, runs, 500):
            await asyncio.gather(*(
                store.create_run(run_id=f"r{i:07d}", workflow=f"wf{i % WORKFLOWS}",
                                 input="[]", now=t0 + i / 1000)
                for i in range(start, min(runs, start + 500))))
    finally:
        await store.close()


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--store", help="an empty journal (default: a fresh SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.store or str(Path(tmp) / "journal.db")
        started = time.perf_counter()
        asyncio.run(fill(url, args.runs))
        filled = time.perf_counter() - started
        app = create_app(Settings(store=url, token="bench", read_only=True))
        with TestClient(app, base_url="http://127.0.0.1:8765") as client:
            cursor_run = f"r{args.runs // 2:07d}"
            rec = client.portal.call(_record, app, cursor_run)  # type: ignore[union-attr]
            pages = {
                "first page": "/runs",
                "status filter": "/runs?status=pending",
                "workflow filter": "/runs?workflow=wf3",
                "last hour": "/runs?since=1h",
                "a page halfway": f"/runs?before={rec!r}&after={cursor_run}",
            }
            print(f"stalwart bench_dashboard  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  "
                  f"{platform.machine()}, Python {platform.python_version()}  "
                  f"{args.runs:,} runs in {'PostgreSQL' if args.store else 'SQLite'} "
                  f"(filled in {filled:.1f}s); median of {args.repeat}")
            print(f"  {'page':<18}{'render ms':>10}{'floor ms':>10}{'x floor':>9}"
                  f"{'target':>12}")
            missed = 0
            for name, path in pages.items():
                response = client.get(path)
                assert response.status_code == 200, response.text
                rows = response.text.count("<tr data-run=")
                assert rows == PAGE or (rows and args.runs < 20 * PAGE), (name, path)
                took = median_ms(lambda p=path: client.get(p), args.repeat)  # type: ignore[misc]
                floor = median_ms(lambda p=path: client.portal.call(  # type: ignore[union-attr,misc]
                    _query, app, p), args.repeat)
                ok = took < TARGET_MS
                missed += not ok
                print(f"  {name:<18}{took:>10.1f}{floor:>10.1f}{took / floor:>9.1f}"
                      f"{'<300 ' + ('ok' if ok else 'MISSED'):>12}")
    return 1 if missed else 0


async def _record(app: object, run_id: str) -> float:
    rt = _runtime(app)
    run = await rt.get_run(run_id)
    return float(run.created_at)


async def _query(app: object, path: str) -> object:
    """The floor: the store's own query for the page's rows (what the page asks for)."""
    from starlette.requests import Request

    from stalwart.cli.dashboard._web import RunFilter

    scope = {"type": "http", "query_string": path.partition("?")[2].encode(),
             "headers": [], "path": path}
    flt = RunFilter.of(Request(scope))
    return await flt.runs(_runtime(app), PAGE + 1)


def _runtime(app: object):  # type: ignore[no-untyped-def]
    return app.state.runtime  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())

"""A scheduled workflow: a report at every tick of ``*/15 * * * *``, exactly once per tick.

Two worker runtimes share one SQLite journal (as two processes of a fleet would); both
try each tick, each tick runs once. Time is a FakeClock, so an hour passes in a blink:

    python examples/scheduled_report.py
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import stalwart as sw

START = datetime(2026, 1, 1, 6, 50, tzinfo=UTC)


def make_app(clock: sw.FakeClock, ran: list[datetime]) -> sw.Runtime:
    # Leases outlast the minute-long jumps of the virtual clock.
    app = sw.Runtime(".stalwart/schedules.db", clock=clock, poll_interval=0.05,
                     lease_seconds=3600)

    @app.scheduled("*/15 * * * *")
    @app.workflow(name="report")
    async def report(ctx: sw.Context, scheduled_at: datetime) -> str:
        ran.append(scheduled_at)
        return f"report for {scheduled_at:%H:%M}"

    return app


async def settled(app: sw.Runtime) -> None:
    """Wait (bounded in real time) until every run started so far has completed."""
    async with asyncio.timeout(20):
        while True:
            runs = await app.store.list_runs()
            if all(r.status == sw.RunStatus.COMPLETED for r in runs):
                return
            await asyncio.sleep(0.01)


async def main() -> None:
    clock = sw.FakeClock(START.timestamp())
    ran: list[datetime] = []
    async with make_app(clock, ran) as a, make_app(clock, ran):
        for _ in range(60):  # 06:50 to 07:50, a minute at a time
            await clock.advance(60)
            await settled(a)
        runs = sorted(r.run_id for r in await a.store.list_runs())
    for run_id in runs:
        print(run_id)
    print(f"{len(ran)} runs for {len(runs)} ticks")


if __name__ == "__main__":
    asyncio.run(main())

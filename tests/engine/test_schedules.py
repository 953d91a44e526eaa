"""Scheduled workflows: each cron tick is one run, on the runtime's clock, once per fleet."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import stalwart as sw
from stalwart.testing import MemoryStore, postgres_schema

T0 = datetime(2026, 1, 1, 7, 0, tzinfo=UTC)
PG_ENV = "STALWART_TEST_POSTGRES_URL"


def at(minutes: float) -> float:
    return (T0 + timedelta(minutes=minutes)).timestamp()


def tick(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def until(pred: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Wait, bounded in real time, until ``pred()`` holds."""
    async with asyncio.timeout(timeout):
        while not await pred():
            await asyncio.sleep(0.01)


def make_app(store: object, clock: sw.FakeClock, seen: list[tuple[datetime, float]],
             *, catchup: timedelta = timedelta(0), cron: str = "*/5 * * * *") -> sw.Runtime:
    app = sw.Runtime(store, clock=clock, poll_interval=0.05,  # type: ignore[arg-type]
                     lease_seconds=3600)

    @app.scheduled(cron, catchup=catchup)
    @app.workflow(name="report")
    async def report(ctx: sw.Context, scheduled_at: datetime) -> str:
        seen.append((scheduled_at, clock.now()))
        return scheduled_at.isoformat()

    return app


async def succeeded(app: sw.Runtime) -> list[str]:
    return sorted(r.run_id for r in await app.store.list_runs(status=sw.RunStatus.COMPLETED))


async def test_ticks_fire_at_exactly_the_cron_times() -> None:
    clock = sw.FakeClock(at(-1), autojump=True)
    seen: list[tuple[datetime, float]] = []
    async with make_app(MemoryStore(), clock, seen) as app:
        async def three() -> bool:
            return len(await succeeded(app)) >= 3
        await until(three)
        assert (await succeeded(app))[:3] == sorted(
            f"schedule:report:{tick(m).isoformat()}" for m in (0, 5, 10))
    assert [s for s, _ in seen[:3]] == [tick(0), tick(5), tick(10)]
    assert all(s.tzinfo is not None and now == s.timestamp() for s, now in seen[:3])


async def test_a_tick_seen_late_while_running_still_starts() -> None:
    """A worker whose loop wakes after the tick (a stall) starts it (catchup is 0)."""
    clock = sw.FakeClock(at(1))
    seen: list[tuple[datetime, float]] = []
    async with make_app(MemoryStore(), clock, seen):
        async def asleep() -> bool:  # the scheduler, the heartbeat and the schedule
            return clock.pending_sleeps >= 3
        await until(asleep)
        await clock.advance(4 * 60 + 30)  # one jump to 07:05:30, past the 07:05 tick

        async def one() -> bool:
            return len(seen) == 1
        await until(one)
    assert seen[0][0] == tick(5)


async def test_restart_catches_up_within_the_window_and_skips_older(
        caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    clock = sw.FakeClock(at(0))
    seen: list[tuple[datetime, float]] = []
    async with make_app(store, clock, seen) as app:
        async def first() -> bool:
            return len(await succeeded(app)) == 1
        await until(first)
    assert [s for s, _ in seen] == [tick(0)]
    clock.set_time(at(62))  # down from 07:00 to 08:02
    caplog.set_level(logging.INFO, "stalwart.schedule")
    async with make_app(store, clock, seen, catchup=timedelta(minutes=15)) as app:
        async def caught_up() -> bool:
            return len(await succeeded(app)) == 4
        await until(caught_up)
    assert [s for s, _ in seen] == [tick(0), tick(50), tick(55), tick(60)]
    assert "ticks before 2026-01-01T07:47:00+00:00 are not started" in caplog.text


async def test_default_catchup_starts_no_missed_tick() -> None:
    clock = sw.FakeClock(at(12))
    seen: list[tuple[datetime, float]] = []
    async with make_app(MemoryStore(), clock, seen) as app:
        async def asleep() -> bool:
            return clock.pending_sleeps >= 3
        await until(asleep)
        await clock.advance(3 * 60)  # 07:15

        async def one() -> bool:
            return len(await succeeded(app)) == 1
        await until(one)
    assert [s for s, _ in seen] == [tick(15)]


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"set {PG_ENV}=postgresql://... to run the PostgreSQL tests")
    with postgres_schema(url) as scoped:
        yield scoped


async def two_runtimes_start_each_tick_once(location: str) -> None:
    clock = sw.FakeClock(at(0))
    seen: list[tuple[datetime, float]] = []
    async with make_app(location, clock, seen) as a, make_app(location, clock, seen):
        async def first() -> bool:
            return len(await succeeded(a)) == 1
        await until(first)
        await clock.advance(5 * 60)

        async def second() -> bool:
            return len(await succeeded(a)) == 2
        await until(second)
        assert len(await a.store.list_runs()) == 2
    assert sorted(s for s, _ in seen) == [tick(0), tick(5)]


async def test_two_runtimes_on_one_sqlite_journal_start_each_tick_once(tmp_path: Path) -> None:
    await two_runtimes_start_each_tick_once(str(tmp_path / "journal.db"))


async def test_two_runtimes_on_postgres_start_each_tick_once(pg_url: str) -> None:
    await two_runtimes_start_each_tick_once(pg_url)


async def test_a_client_runtime_starts_no_tick() -> None:
    store = MemoryStore()
    clock = sw.FakeClock(at(0))
    seen: list[tuple[datetime, float]] = []
    app = make_app(store, clock, seen)
    async with app.client() as client:
        await client.start(app.resolve("report"), tick(1), run_id="probe")
        assert [r.run_id for r in await client.store.list_runs()] == ["probe"]


def wf_app() -> sw.Runtime:
    return sw.Runtime(MemoryStore())


@pytest.mark.parametrize(("cron", "catchup", "tz", "match"), [
    ("every morning", timedelta(0), "UTC", "invalid cron expression 'every morning'"),
    ("0 7 * * *", timedelta(minutes=-1), "UTC", "catchup must be a timedelta >= 0"),
    ("0 7 * * *", 60, "UTC", "catchup must be a timedelta >= 0"),
    ("0 7 * * *", timedelta(0), "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
])
def test_bad_declarations_are_configuration_errors(cron: str, catchup: timedelta, tz: str,
                                                   match: str) -> None:
    app = wf_app()
    with pytest.raises(sw.ConfigurationError, match=match):
        @app.scheduled(cron, catchup=catchup, tz=tz)
        @app.workflow
        async def job(ctx: sw.Context, scheduled_at: datetime) -> None: ...
    assert app.schedules == []


def test_a_workflow_with_other_parameters_is_refused() -> None:
    app = wf_app()
    with pytest.raises(sw.ConfigurationError, match=r"must take \(ctx, scheduled_at"):
        @app.scheduled("0 7 * * *")
        @app.workflow
        async def none(ctx: sw.Context) -> None: ...
    with pytest.raises(sw.ConfigurationError, match=r"must take \(ctx, scheduled_at"):
        @app.scheduled("0 7 * * *")
        @app.workflow
        async def two(ctx: sw.Context, scheduled_at: datetime, who: str) -> None: ...
    with pytest.raises(sw.ConfigurationError, match=r"must take \(ctx, scheduled_at"):
        @app.scheduled("0 7 * * *")
        @app.workflow
        async def kw(ctx: sw.Context, *, scheduled_at: datetime) -> None: ...

    @app.scheduled("0 7 * * *")
    @app.workflow
    async def ok(ctx: sw.Context, scheduled_at: datetime, who: str = "ops") -> None: ...
    assert [s.workflow.name for s in app.schedules] == [ok.name]


def test_scheduled_goes_over_a_workflow() -> None:
    app = wf_app()

    async def bare(ctx: sw.Context, scheduled_at: datetime) -> None: ...
    with pytest.raises(sw.ConfigurationError, match=r"over @app\.workflow"):
        app.scheduled("0 7 * * *")(bare)  # type: ignore[arg-type]


async def test_a_tz_reads_the_expression_in_that_zone() -> None:
    app = wf_app()

    @app.scheduled("0 7 * * *", tz="Europe/Lisbon")
    @app.workflow
    async def job(ctx: sw.Context, scheduled_at: datetime) -> None: ...
    from stalwart._schedule import next_tick
    summer = datetime(2026, 7, 1, tzinfo=UTC)
    assert next_tick(app.schedules[0], summer) == datetime(2026, 7, 1, 6, 0, tzinfo=UTC)

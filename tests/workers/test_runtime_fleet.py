"""The runtime's side of running in a fleet, in virtual time on the in-memory store.

A journal that fails under a run (a database restart) hands the run back instead of
failing it; ``drain`` stops claiming and waits for executing runs; pools restrict what a
worker claims; every worker reports itself to the workers registry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from stalwart import Context, FakeClock, Runtime, Workflow
from stalwart.errors import StoreError
from stalwart.store import EventKind, Finish, Lease, NewEvent, RunStatus
from stalwart.store._base import AppendResult
from stalwart.testing import MemoryStore


class FlakyStore:
    """A MemoryStore whose appends number ``fail_at`` (1-based) raise a retryable
    StoreError without writing anything, as a connection lost to a restart would."""

    def __init__(self, fail_at: set[int]) -> None:
        self.inner = MemoryStore()
        self.fail_at = fail_at
        self.appends = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append(self, lease: Lease, events: Sequence[NewEvent], *, now: float,
                     finish: Finish | None = None) -> AppendResult:
        self.appends += 1
        if self.appends in self.fail_at:
            raise StoreError("connection lost (simulated restart)", retryable=True)
        return await self.inner.append(lease, events, now=now, finish=finish)


executed: Counter[int] = Counter()


async def tick(label: int) -> int:
    executed[label] += 1
    return label * 10


async def _three(ctx: Context, seed: int) -> int:
    total = seed
    for label in range(3):
        total += await ctx.step(tick, label)
    return total


three = Workflow(_three, name="three")


async def _nap(ctx: Context, seconds: float) -> float:
    await ctx.step(nap_step, seconds)
    return seconds


async def nap_step(seconds: float) -> None:
    await _clock.sleep(seconds)


_clock = FakeClock(autojump=True)
nap = Workflow(_nap, name="nap")
gpu_three = Workflow(_three, name="gpu_three", pool="gpu")


@pytest.fixture
def clock() -> FakeClock:
    global _clock
    _clock = FakeClock(autojump=True)
    executed.clear()
    return _clock


# Appends of a crash-free run of `three`: three step outcomes, then the completion.
@pytest.mark.parametrize("fail_at", [1, 2, 4], ids=["first-step", "second-step", "finish"])
async def test_a_journal_failure_hands_the_run_back_and_it_completes(
        clock: FakeClock, fail_at: int) -> None:
    """A failed journal write ends the execution without an outcome; a replay finishes
    the run, and only the step whose write failed runs again."""
    store = FlakyStore({fail_at})
    app = Runtime(store, clock=clock, poll_interval=0.5)  # type: ignore[arg-type]
    async with app:
        result = await app.run(three, 5)
        events = await app.events((await app.list_runs())[0].run_id)
    assert result == 5 + 0 + 10 + 20
    assert not [e for e in events if e.kind == EventKind.RUN_FAILED]
    claims = [e for e in events if e.kind == EventKind.RUN_CLAIMED]
    assert len(claims) == 2
    again = {1: {0}, 2: {1}, 4: set()}[fail_at]
    assert executed == Counter({label: 1 + (label in again) for label in range(3)})


async def test_drain_waits_for_executing_runs_and_stops_claiming(clock: FakeClock) -> None:
    """drain() returns once executing runs end; runs started afterwards are not claimed."""
    app = Runtime(MemoryStore(), clock=clock, poll_interval=0.5)
    async with app:
        first = await app.start(nap, 10.0)
        await clock.sleep(1)
        assert await first.status() == RunStatus.RUNNING
        started = clock.monotonic()
        assert await app.drain(60) == 0
        assert clock.monotonic() - started == pytest.approx(9.0)
        assert await first.status() == RunStatus.COMPLETED
        later = await app.start(nap, 1.0)
        await clock.sleep(30)
        assert await later.status() == RunStatus.PENDING


async def test_drain_gives_up_after_grace_and_close_hands_the_run_back(
        clock: FakeClock) -> None:
    """After the grace period the run still executes; close() puts it back to pending."""
    store = MemoryStore()
    app = Runtime(store, clock=clock, poll_interval=0.5)
    await app.open()
    handle = await app.start(nap, 100.0)
    await clock.sleep(1)
    started = clock.monotonic()
    assert await app.drain(5) == 1
    assert clock.monotonic() - started == pytest.approx(5.0)
    await app.close()
    rec = await store.get_run(handle.run_id)
    assert rec is not None and rec.status == RunStatus.PENDING and rec.lease_owner is None


async def test_pools_restrict_which_runs_are_claimed(clock: FakeClock) -> None:
    """A runtime serving pool 'gpu' claims gpu_three runs and leaves default-pool runs."""
    store = MemoryStore()
    gpu = Runtime(store, clock=clock, poll_interval=0.5, pools={"gpu"})
    gpu.register(three)
    gpu.register(gpu_three)
    assert gpu.served_workflows() == ["gpu_three"]
    async with gpu:
        plain = await gpu.start(three, 1)
        pooled = await gpu.start(gpu_three, 1)
        assert await pooled.result(timeout=60) == 31
        await clock.sleep(10)
        assert await plain.status() == RunStatus.PENDING
    default = Runtime(store, clock=clock, poll_interval=0.5, pools={"default"})
    default.register(three)
    async with default:
        assert await default.handle(plain.run_id).result(timeout=60) == 31


async def test_every_worker_reports_to_the_registry(clock: FakeClock) -> None:
    """A worker's row appears at start, its heartbeat advances, and close marks it stopped."""
    store = MemoryStore()
    app = Runtime(store, clock=clock, concurrency=7, lease_seconds=30, pools={"gpu"})
    await app.open()
    await clock.sleep(0.1)
    [row] = await store.list_workers(since=0)
    assert (row.worker_id, row.pid, row.concurrency, row.pools) == (
        app.owner.id, app.owner.pid, 7, ("gpu",))
    assert row.started_at == row.heartbeat_at
    assert row.alive(clock.now())
    await clock.sleep(25)
    [row] = await store.list_workers(since=0)
    assert row.heartbeat_at == pytest.approx(row.started_at + 20)
    await app.close()
    [row] = await store.list_workers(since=0)
    assert row.stopped_at is not None and not row.alive(clock.now())


async def test_a_client_runtime_is_not_a_worker(clock: FakeClock) -> None:
    """Runtime(worker=False) executes nothing and does not appear in the registry."""
    store = MemoryStore()
    async with Runtime(store, clock=clock, worker=False) as client:
        await client.start(three, 1)
        await clock.sleep(10)
    assert await store.list_workers(since=0) == []

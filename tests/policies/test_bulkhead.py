"""Bulkheads: the concurrency cap, the bounded FIFO queue and its timeout, in virtual time."""

from __future__ import annotations

import asyncio
import random

import pytest

from stalwart._clock import FakeClock
from stalwart.errors import BulkheadFullError, ConfigurationError
from stalwart.policies import Bulkhead, BulkheadConfig, BulkheadRegistry


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_concurrent": 0}, {"max_queue": -1}, {"queue_timeout": -1.0},
     {"max_concurrent": 1.5}, {"max_queue": True}],
)
def test_bad_config_is_rejected(kwargs: dict[str, object]) -> None:
    """At least one slot, a non-negative queue and timeout."""
    with pytest.raises(ConfigurationError):
        BulkheadConfig(**kwargs)  # type: ignore[arg-type]


async def test_waiters_get_slots_in_arrival_order() -> None:
    """With one slot, queued callers run strictly first come, first served."""
    clock = FakeClock(autojump=True)
    bulkhead = Bulkhead(BulkheadConfig(max_concurrent=1, max_queue=10), clock=clock)
    order: list[int] = []

    async def job(i: int) -> None:
        async with bulkhead:
            order.append(i)
            await clock.sleep(1.0)

    await asyncio.gather(*(job(i) for i in range(6)))
    assert order == [0, 1, 2, 3, 4, 5]
    assert clock.monotonic() == 6.0
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.max_seen) == (0, 0, 1)


async def test_a_full_queue_rejects_at_once() -> None:
    """Beyond max_concurrent + max_queue, callers fail immediately and retryably."""
    clock = FakeClock()
    bulkhead = Bulkhead(BulkheadConfig(max_concurrent=2, max_queue=1), clock=clock,
                        name="tools")
    holders = [asyncio.create_task(bulkhead.acquire()) for _ in range(3)]
    await settle()
    with pytest.raises(BulkheadFullError) as caught:
        await bulkhead.acquire()
    assert caught.value.retryable
    assert caught.value.reason == "queue_full"
    assert caught.value.name == "tools"
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.rejected) == (2, 1, 1)
    bulkhead.release()
    await asyncio.gather(*holders)
    assert bulkhead.statistics().queued == 0


async def test_no_queue_means_no_waiting() -> None:
    """max_queue=0 rejects as soon as every slot is busy."""
    clock = FakeClock()
    bulkhead = Bulkhead(BulkheadConfig(max_concurrent=1, max_queue=0), clock=clock)
    await bulkhead.acquire()
    with pytest.raises(BulkheadFullError):
        await bulkhead.acquire()


async def test_queue_timeout_fails_at_exactly_the_limit() -> None:
    """A waiter gives up after queue_timeout of clock time, with BulkheadFullError."""
    clock = FakeClock(start=0.0, autojump=True)
    bulkhead = Bulkhead(BulkheadConfig(max_concurrent=1, queue_timeout=5.0), clock=clock)
    await bulkhead.acquire()
    with pytest.raises(BulkheadFullError) as caught:
        await bulkhead.acquire()
    assert caught.value.reason == "queue_timeout"
    assert clock.monotonic() == 5.0
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued, stats.timed_out) == (1, 0, 1)


async def test_slot_freed_before_the_timeout_is_taken() -> None:
    """A waiter that gets its slot in time is not timed out later."""
    clock = FakeClock(start=0.0, autojump=True)
    bulkhead = Bulkhead(BulkheadConfig(max_concurrent=1, queue_timeout=5.0), clock=clock)

    async def holder() -> None:
        async with bulkhead:
            await clock.sleep(3.0)

    task = asyncio.create_task(holder())
    await asyncio.sleep(0)
    async with bulkhead:
        assert clock.monotonic() == 3.0
        await clock.sleep(10.0)
    await task
    assert bulkhead.statistics().timed_out == 0


async def test_a_slot_handed_to_a_cancelled_waiter_moves_on() -> None:
    """Cancelling a waiter just as it is granted passes the slot to the next waiter."""
    clock = FakeClock()
    bulkhead = Bulkhead(BulkheadConfig(max_concurrent=1), clock=clock)
    await bulkhead.acquire()
    first = asyncio.create_task(bulkhead.acquire())
    second = asyncio.create_task(bulkhead.acquire())
    await settle()
    bulkhead.release()  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued) == (1, 0)


async def test_a_release_skips_a_waiter_cancelled_but_not_yet_resumed() -> None:
    """A waiter cancelled before its task runs again is passed over by release()."""
    clock = FakeClock()
    bulkhead = Bulkhead(BulkheadConfig(max_concurrent=1), clock=clock, name="pool")
    await bulkhead.acquire()
    first = asyncio.create_task(bulkhead.acquire())
    second = asyncio.create_task(bulkhead.acquire())
    await settle()
    first.cancel()  # its future is cancelled now; its task resumes later
    bulkhead.release()
    await second
    with pytest.raises(asyncio.CancelledError):
        await first
    stats = bulkhead.statistics()
    assert (stats.active, stats.queued) == (1, 0)
    assert bulkhead.name == "pool"


async def test_releasing_more_than_acquired_is_an_error() -> None:
    """An unmatched release raises instead of corrupting the count."""
    bulkhead = Bulkhead(clock=FakeClock())
    with pytest.raises(RuntimeError):
        bulkhead.release()


@pytest.mark.parametrize("seed", range(12))
async def test_never_exceeds_the_limit_under_random_cancellation(seed: int) -> None:
    """200 callers, random work, random cancellations: at most 4 run at once, none leak."""
    rng = random.Random(seed)
    clock = FakeClock(start=0.0, autojump=True)
    limit = 4
    timeout = rng.choice([None, 2.0, 7.5])
    bulkhead = Bulkhead(BulkheadConfig(max_concurrent=limit, max_queue=60,
                                       queue_timeout=timeout), clock=clock)
    running = 0
    peak = 0
    finished = 0

    async def caller() -> None:
        nonlocal running, peak, finished
        await clock.sleep(rng.choice([0.0, 0.5, 1.0, 3.0]))
        try:
            async with bulkhead:
                running += 1
                peak = max(peak, running)
                try:
                    await clock.sleep(rng.choice([0.5, 1.0, 2.5]))
                finally:
                    running -= 1
            finished += 1
        except BulkheadFullError:
            pass

    tasks = [asyncio.create_task(caller()) for _ in range(200)]

    async def canceller() -> None:
        for _ in range(80):
            await clock.sleep(rng.choice([0.0, 0.25, 0.5]))
            rng.choice(tasks).cancel()
            assert bulkhead.statistics().active <= limit

    await asyncio.gather(canceller(), *tasks, return_exceptions=True)
    stats = bulkhead.statistics()
    assert peak <= limit
    assert peak <= stats.max_seen <= limit
    assert (stats.active, stats.queued, running) == (0, 0, 0)
    assert finished > 0


def test_registry_keeps_one_bulkhead_per_pool() -> None:
    """Pools are created on first use, from their override or the default."""
    clock = FakeClock()
    registry = BulkheadRegistry(clock=clock, default=BulkheadConfig(max_concurrent=3),
                                overrides={"browser": BulkheadConfig(max_concurrent=1)})
    assert registry.get("llm") is registry.get("llm")
    assert registry.get("browser").statistics().max_concurrent == 1
    assert registry.get("llm").statistics().max_concurrent == 3
    assert registry.get("new", BulkheadConfig(max_concurrent=7)).statistics().max_concurrent == 7
    assert "llm" in registry
    assert set(registry.statistics()) == {"llm", "browser", "new"}

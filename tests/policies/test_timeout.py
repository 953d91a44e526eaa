"""Timeouts and deadline scopes in virtual time."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest

from stalwart._clock import FakeClock
from stalwart.errors import CallTimeoutError, ConfigurationError, StalwartError
from stalwart.policies import (
    Retry,
    RetryEvent,
    Timeout,
    call_with_retry,
    current_deadline,
    deadline_scope,
    remaining,
    with_timeout,
)
from stalwart.policies._timeout import call_deadline


async def work(clock: FakeClock, seconds: float, result: str = "done") -> str:
    """Sleep ``seconds`` of virtual time, then return ``result``."""
    await clock.sleep(seconds)
    return result


@pytest.mark.parametrize(
    "kwargs", [{"per_attempt": 0.0}, {"overall": -1.0}, {"per_attempt": "1s"}]
)
def test_bad_timeout_config_is_rejected(kwargs: dict[str, object]) -> None:
    """Timeouts must be positive durations."""
    with pytest.raises(ConfigurationError):
        Timeout(**kwargs)  # type: ignore[arg-type]


def test_timeout_config_stores_seconds() -> None:
    """Timeout accepts timedelta and stores float seconds; None disables a limit."""
    assert Timeout(per_attempt=timedelta(seconds=2)) == Timeout(per_attempt=2.0, overall=None)


async def test_call_within_its_timeout_returns_its_result() -> None:
    """A 3 s call under a 5 s timeout returns at exactly t=3."""
    clock = FakeClock(autojump=True)
    assert await with_timeout(work(clock, 3.0), 5.0, clock=clock) == "done"
    assert clock.monotonic() == 3.0
    assert current_deadline() is None


async def test_slow_call_times_out_at_exactly_the_limit() -> None:
    """A 10 s call under a 5 s timeout raises a retryable CallTimeoutError at t=5."""
    clock = FakeClock(autojump=True)
    with pytest.raises(CallTimeoutError) as caught:
        await with_timeout(work(clock, 10.0), 5.0, clock=clock)
    assert clock.monotonic() == 5.0
    assert caught.value.retryable
    assert caught.value.timeout == 5.0
    assert isinstance(caught.value.__cause__, asyncio.CancelledError)


async def test_scopes_publish_the_deadline_and_nest_by_minimum() -> None:
    """Nested scopes see the earlier deadline; leaving a scope restores the outer one."""
    clock = FakeClock(autojump=True)
    assert remaining() is None
    async with deadline_scope(10.0, clock=clock):
        assert current_deadline() == 10.0
        await clock.sleep(1.0)
        assert remaining() == 9.0
        async with deadline_scope(3.0, clock=clock):
            assert current_deadline() == 4.0
        async with deadline_scope(60.0, clock=clock) as loose:
            assert current_deadline() == 10.0
            assert loose.deadline == 10.0
        async with deadline_scope(None, clock=clock):
            assert current_deadline() == 10.0
        assert current_deadline() == 10.0
    assert current_deadline() is None


async def test_inner_scope_expiry_is_caught_inside_the_outer_one() -> None:
    """A tighter inner scope raises at its own deadline and the outer body goes on."""
    clock = FakeClock(autojump=True)
    async with deadline_scope(10.0, clock=clock) as outer:
        with pytest.raises(CallTimeoutError):
            async with deadline_scope(2.0, clock=clock) as inner:
                await clock.sleep(5.0)
        assert inner.expired
        assert clock.monotonic() == 2.0
        await clock.sleep(1.0)
    assert not outer.expired
    assert clock.monotonic() == 3.0


async def test_outer_deadline_cuts_a_looser_inner_call() -> None:
    """A 60 s per-call timeout inside a 4 s scope ends at t=4, raised by the outer scope."""
    clock = FakeClock(autojump=True)
    with pytest.raises(CallTimeoutError) as caught:
        async with deadline_scope(4.0, clock=clock):
            await with_timeout(work(clock, 30.0), 60.0, clock=clock)
    assert clock.monotonic() == 4.0
    assert caught.value.timeout == 4.0


async def test_a_passed_deadline_fails_before_starting_the_call() -> None:
    """Entering a scope after the enclosing deadline raises and closes the coroutine."""
    clock = FakeClock()
    started: list[bool] = []

    async def call() -> None:
        started.append(True)

    async with deadline_scope(1.0, clock=clock):
        clock.advance_sync(2.0)  # time passes without the task yielding
        with pytest.raises(CallTimeoutError):
            await with_timeout(call(), 5.0, clock=clock)
    assert started == []


async def test_outside_cancellation_is_not_turned_into_a_timeout() -> None:
    """Cancelling a task inside a scope raises CancelledError, not CallTimeoutError."""
    clock = FakeClock()
    task = asyncio.create_task(with_timeout(work(clock, 10.0), 5.0, clock=clock))
    await clock.advance(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_scopes_on_different_clocks_do_not_nest() -> None:
    """A nested scope must share its parent's clock."""
    clock = FakeClock(autojump=True)
    async with deadline_scope(5.0, clock=clock):
        with pytest.raises(ConfigurationError):
            async with deadline_scope(1.0, clock=FakeClock()):
                pass


async def test_per_attempt_timeouts_inside_retry() -> None:
    """Each attempt times out after 2 s and is retried; the third attempt succeeds."""
    clock = FakeClock(start=0.0, autojump=True)
    durations = iter([10.0, 10.0, 1.0])
    events: list[RetryEvent] = []
    policy = Retry(max_attempts=3, initial=1.0, jitter="none")

    async def attempt() -> str:
        return await with_timeout(work(clock, next(durations)), 2.0, clock=clock)

    result = await call_with_retry(policy, attempt, clock=clock, rng=random.Random(),
                                   on_event=events.append)
    assert result == "done"
    # attempt 1: 0-2 (timeout), sleep 1; attempt 2: 3-5 (timeout), sleep 2; attempt 3: 7-8
    assert [e.at for e in events if e.kind == "attempt"] == [0.0, 3.0, 7.0]
    assert clock.monotonic() == 8.0
    assert all(isinstance(e.error, CallTimeoutError) for e in events if e.kind == "retry")


async def test_overall_deadline_cancels_a_sleeping_retry() -> None:
    """An overall deadline cancels the retry loop mid-attempt, at exactly its time."""
    clock = FakeClock(start=0.0, autojump=True)

    async def attempt() -> None:
        await clock.sleep(1.0)
        raise StalwartError("transient", retryable=True)

    policy = Retry(max_attempts=None, initial=1.0, multiplier=1.0, jitter="none")
    with pytest.raises(CallTimeoutError):
        async with deadline_scope(4.5, clock=clock):
            await call_with_retry(policy, attempt, clock=clock, rng=random.Random())
    assert clock.monotonic() == 4.5


async def test_a_call_deadline_cancels_nothing_but_bounds_what_is_inside() -> None:
    """call_deadline publishes a deadline (remaining() counts down) yet lets a plain
    body run past it: only a scope entered inside enforces it, at exactly its time."""
    clock = FakeClock(start=0.0, autojump=True)
    with call_deadline(2.0, clock=clock):
        assert remaining() == 2.0
        assert await work(clock, 5.0) == "done"  # nothing cancels the body itself
        assert remaining() == 0.0
    assert remaining() is None
    with call_deadline(2.0, clock=clock), pytest.raises(CallTimeoutError) as caught:
        await with_timeout(work(clock, 5.0), None, clock=clock)
    assert clock.monotonic() == 7.0 and caught.value.timeout == 2.0


async def test_a_tighter_enclosing_deadline_stays_in_force_over_a_call_deadline() -> None:
    """An enforcing scope of 1 s around a 5 s call deadline still cuts at 1 s; a call
    deadline inside a looser one is the tighter of the two."""
    clock = FakeClock(start=0.0, autojump=True)

    async def nested() -> None:
        async with deadline_scope(1.0, clock=clock):
            with call_deadline(5.0, clock=clock):
                assert remaining() == 1.0
                await work(clock, 3.0)

    with pytest.raises(CallTimeoutError):
        await nested()
    assert clock.monotonic() == 1.0
    with call_deadline(10.0, clock=clock), call_deadline(3.0, clock=clock):
        assert remaining() == 3.0


async def test_a_per_attempt_limit_tighter_than_the_call_deadline_wins() -> None:
    """Inside a 10 s call deadline, with_timeout(1 s) cuts at 1 s with timeout=1.0."""
    clock = FakeClock(start=0.0, autojump=True)
    with call_deadline(10.0, clock=clock), pytest.raises(CallTimeoutError) as caught:
        await with_timeout(work(clock, 5.0), 1.0, clock=clock)
    assert clock.monotonic() == 1.0 and caught.value.timeout == 1.0

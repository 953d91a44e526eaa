"""The circuit breaker's state machine, case by case as resilience4j's tests pin it."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from stalwart._clock import FakeClock
from stalwart.errors import CircuitOpenError, ConfigurationError
from stalwart.policies import (
    BreakerRegistry,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    CircuitBreakerConfig,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class Boom(Exception):
    """A failure of the guarded dependency."""


class NotOurFault(Exception):
    """An error the breaker is told to ignore."""


def breaker(clock: FakeClock, **config: object) -> CircuitBreaker:
    """A breaker with small windows unless ``config`` says otherwise."""
    settings: dict[str, object] = {
        "window_size": 10, "minimum_calls": 5, "failure_rate_threshold": 50.0,
        "slow_call_duration": 1.0, "wait_in_open": 30.0, "permitted_calls_in_half_open": 3,
    }
    settings.update(config)
    return CircuitBreaker(CircuitBreakerConfig(**settings), clock=clock, key="dep")  # type: ignore[arg-type]


def succeed(b: CircuitBreaker, duration: float = 0.1) -> None:
    """One permitted call that succeeded."""
    b.acquire()
    b.on_success(duration)


def fail(b: CircuitBreaker, duration: float = 0.1, exc: BaseException | None = None) -> None:
    """One permitted call that failed."""
    b.acquire()
    b.on_error(duration, exc or Boom())


def trip(b: CircuitBreaker) -> None:
    """Fail enough calls to open the breaker."""
    while b.state is CLOSED:
        fail(b)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_type": "sliding"},
        {"window_size": 0},
        {"minimum_calls": 0},
        {"permitted_calls_in_half_open": 0},
        {"failure_rate_threshold": 0.0},
        {"failure_rate_threshold": 100.5},
        {"slow_call_rate_threshold": -1.0},
        {"slow_call_duration": 0.0},
        {"wait_in_open": -5.0},
        {"window_size": 2.5},
        {"record": None},
    ],
)
def test_bad_config_is_rejected(kwargs: dict[str, object]) -> None:
    """Sizes below 1, thresholds outside (0, 100] and non-positive durations fail."""
    with pytest.raises(ConfigurationError):
        CircuitBreakerConfig(**kwargs)  # type: ignore[arg-type]


def test_opens_when_the_failure_rate_reaches_the_threshold() -> None:
    """5 calls, 3 failed (60% >= 50%): CLOSED -> OPEN on the fifth outcome."""
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(3):
        fail(b)
    succeed(b)
    assert b.state is CLOSED
    succeed(b)
    assert b.state is OPEN
    stats = b.statistics()
    assert stats.failure_rate == 60.0
    assert stats.calls_in_window == 5


def test_failure_rate_equal_to_the_threshold_opens() -> None:
    """The comparison is >=: exactly 50% failures opens a 50% breaker."""
    clock = FakeClock()
    b = breaker(clock, minimum_calls=4)
    for outcome in (fail, fail, succeed, succeed):
        outcome(b)
    assert b.state is OPEN


def test_does_not_open_before_minimum_calls() -> None:
    """Four failures out of four stay CLOSED while minimum_calls is 5; rates are None."""
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(4):
        fail(b)
    assert b.state is CLOSED
    stats = b.statistics()
    assert stats.failure_rate is None
    assert stats.slow_call_rate is None
    assert stats.failed_calls == 4
    fail(b)
    assert b.state is OPEN


def test_count_window_minimum_is_capped_at_the_window_size() -> None:
    """minimum_calls above a count window's size is judged at the window size."""
    clock = FakeClock()
    b = breaker(clock, window_size=3, minimum_calls=100)
    for _ in range(3):
        fail(b)
    assert b.state is OPEN


def test_opens_when_the_slow_call_rate_reaches_the_threshold() -> None:
    """Successful but slow calls (> slow_call_duration) open it on the slow-call rate."""
    clock = FakeClock()
    b = breaker(clock, slow_call_rate_threshold=60.0)
    for duration in (2.0, 2.0, 0.5, 0.5):
        succeed(b, duration)
    succeed(b, 1.5)
    assert b.state is OPEN
    assert b.statistics().slow_call_rate == 60.0
    assert b.statistics().failure_rate == 0.0


def test_a_call_exactly_at_the_slow_duration_is_not_slow() -> None:
    """Slow means strictly longer than slow_call_duration."""
    clock = FakeClock()
    b = breaker(clock, slow_call_rate_threshold=10.0)
    for _ in range(5):
        succeed(b, 1.0)
    assert b.state is CLOSED
    assert b.statistics().slow_calls == 0


def test_open_rejects_with_the_time_left_to_wait() -> None:
    """OPEN rejects every call; retry_after is the exact open time left, and the error is
    retryable after it (Retry waits for the half-open trial call)."""
    clock = FakeClock()
    b = breaker(clock)
    trip(b)
    clock.advance_sync(12.0)
    with pytest.raises(CircuitOpenError) as caught:
        b.acquire()
    error = caught.value
    assert error.retryable
    assert error.retry_after == 18.0
    assert error.key == "dep"
    assert error.state == "open"
    stats = b.statistics()
    assert stats.rejected_calls == 1
    assert stats.rejected_total == 1
    assert stats.retry_after == 18.0


def test_open_turns_half_open_on_the_first_acquire_after_the_wait() -> None:
    """Just before wait_in_open a call is rejected; at it, the call is a trial call."""
    clock = FakeClock()
    b = breaker(clock)
    trip(b)
    clock.advance_sync(29.5)
    with pytest.raises(CircuitOpenError):
        b.acquire()
    clock.advance_sync(0.5)
    assert b.state is OPEN  # nothing happens until someone asks
    permit = b.acquire()
    assert permit.state is HALF_OPEN
    assert b.state is HALF_OPEN
    assert b.statistics().half_open_permits_left == 2


def test_half_open_closes_when_the_trial_calls_succeed() -> None:
    """Three good trial calls close the breaker with a fresh window."""
    clock = FakeClock()
    b = breaker(clock)
    trip(b)
    clock.advance_sync(30.0)
    for _ in range(3):
        succeed(b)
    assert b.state is CLOSED
    assert b.statistics().calls_in_window == 0


def test_half_open_reopens_when_the_trial_calls_fail() -> None:
    """Trial calls at the failure threshold open it again for another full wait."""
    clock = FakeClock()
    b = breaker(clock)
    trip(b)
    clock.advance_sync(30.0)
    fail(b)
    fail(b)
    succeed(b)
    assert b.state is OPEN
    with pytest.raises(CircuitOpenError) as caught:
        b.acquire()
    assert caught.value.retry_after == 30.0


def test_half_open_judges_at_the_smaller_of_minimum_and_permitted() -> None:
    """With minimum_calls=2 and 3 trial calls, two successes already close it."""
    clock = FakeClock()
    b = breaker(clock, minimum_calls=2, permitted_calls_in_half_open=3)
    trip(b)
    clock.advance_sync(30.0)
    succeed(b)
    assert b.state is HALF_OPEN
    succeed(b)
    assert b.state is CLOSED


def test_half_open_rejects_calls_beyond_the_permitted_number() -> None:
    """The fourth concurrent trial call is rejected while three are in flight."""
    clock = FakeClock()
    b = breaker(clock)
    trip(b)
    clock.advance_sync(30.0)
    for _ in range(3):
        b.acquire()
    with pytest.raises(CircuitOpenError) as caught:
        b.acquire()
    assert caught.value.state == "half_open"
    assert caught.value.retry_after is None
    assert b.statistics().half_open_permits_left == 0
    assert b.statistics().rejected_calls == 1


def test_count_window_slides_old_calls_out() -> None:
    """Only the last window_size calls count: early failures are forgotten."""
    clock = FakeClock()
    b = breaker(clock, window_size=4, minimum_calls=4)
    for outcome in (fail, succeed, succeed, succeed, succeed):
        outcome(b)
    stats = b.statistics()
    assert (stats.calls_in_window, stats.failed_calls, stats.failure_rate) == (4, 0, 0.0)
    fail(b)
    assert b.state is CLOSED  # 1 of the last 4 (3 of all 6 would be 50%)
    fail(b)
    assert b.state is OPEN


def test_time_window_slides_old_seconds_out() -> None:
    """A failure leaves a 10 s window once its whole second is 10 seconds old."""
    clock = FakeClock()
    b = breaker(clock, window_type="time", window_size=10, minimum_calls=2)
    clock.advance_sync(0.5)
    fail(b)
    clock.advance_sync(9.4)  # t = 9.9: the failure's second (0) is still in the window
    assert b.statistics().calls_in_window == 1
    clock.advance_sync(0.1)  # t = 10.0: second 0 has left the window
    assert b.statistics().calls_in_window == 0
    succeed(b)
    fail(b)
    assert b.state is OPEN  # 1 of 2 in the window: 50%


def test_time_window_counts_every_call_of_the_window() -> None:
    """A time window holds any number of calls from its last seconds."""
    clock = FakeClock()
    b = breaker(clock, window_type="time", window_size=5, minimum_calls=20)
    for _ in range(19):
        succeed(b)
        clock.advance_sync(0.25)
    assert b.statistics().calls_in_window == 19  # seconds 0-4, all within 5 s
    fail(b)
    assert b.state is CLOSED


def test_ignored_errors_count_as_nothing_and_return_the_permit() -> None:
    """An ignored error is not recorded and gives its trial-call permit back."""
    clock = FakeClock()
    b = breaker(clock, ignore=lambda e: isinstance(e, NotOurFault))
    for _ in range(10):
        fail(b, exc=NotOurFault())
    assert b.statistics().calls_in_window == 0
    trip(b)
    clock.advance_sync(30.0)
    fail(b, exc=NotOurFault())
    assert b.statistics().half_open_permits_left == 3


def test_unrecorded_errors_count_as_successes() -> None:
    """An error that record= rejects is a success, as in resilience4j."""
    clock = FakeClock()
    b = breaker(clock, record=lambda e: isinstance(e, Boom))
    for _ in range(5):
        fail(b, exc=KeyError("missing"))
    stats = b.statistics()
    assert (b.state, stats.calls_in_window, stats.failed_calls) == (CLOSED, 5, 0)


def test_late_outcomes_while_open_are_recorded_without_transition() -> None:
    """A call permitted before the breaker opened still records, and it stays OPEN."""
    clock = FakeClock()
    b = breaker(clock)
    b.acquire()  # in flight while others trip the breaker
    trip(b)
    b.on_success(0.1)
    assert b.state is OPEN
    assert b.statistics().calls_in_window == 6


def test_listeners_see_each_transition() -> None:
    """Listeners receive frozen BreakerTransition events with key and wall time."""
    clock = FakeClock(start=1000.0)
    b = breaker(clock)
    events: list[BreakerTransition] = []
    b.add_listener(events.append)
    trip(b)
    clock.advance_sync(30.0)
    for _ in range(3):
        succeed(b)
    b.remove_listener(events.append)
    b.reset()
    assert events == [
        BreakerTransition("dep", CLOSED, OPEN, 1000.0),
        BreakerTransition("dep", OPEN, HALF_OPEN, 1030.0),
        BreakerTransition("dep", HALF_OPEN, CLOSED, 1030.0),
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].at = 0.0  # type: ignore[misc]


async def test_guard_times_the_call_and_records_its_outcome() -> None:
    """guard() measures durations on the clock: a 2 s success is slow."""
    clock = FakeClock(autojump=True)
    b = breaker(clock, slow_call_rate_threshold=100.0, minimum_calls=1)
    async with b.guard():
        await clock.sleep(2.0)
    assert b.state is OPEN
    assert b.statistics().slow_calls == 1


async def test_call_records_failures_and_reraises() -> None:
    """call(fn) re-raises the failure after recording it."""
    clock = FakeClock(autojump=True)
    b = breaker(clock, minimum_calls=1)

    async def boom() -> None:
        raise Boom

    with pytest.raises(Boom):
        await b.call(boom)
    assert b.state is OPEN
    with pytest.raises(CircuitOpenError):
        await b.call(boom)


async def test_cancelled_trial_call_returns_its_permit() -> None:
    """Cancelling a guarded trial call releases its permit without recording."""
    clock = FakeClock()
    b = breaker(clock)
    trip(b)
    clock.advance_sync(30.0)

    async def slow() -> None:
        await clock.sleep(100.0)

    task = asyncio.create_task(b.call(slow))
    await asyncio.sleep(0)
    assert b.statistics().half_open_permits_left == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.statistics().half_open_permits_left == 3
    assert b.statistics().calls_in_window == 0


def test_registry_creates_one_breaker_per_key() -> None:
    """The registry makes a breaker on first use, from an override or the default."""
    clock = FakeClock()
    special = CircuitBreakerConfig(minimum_calls=1, window_size=1)
    registry = BreakerRegistry(clock=clock, overrides={"tool:send_email": special})
    gpt = registry.get("openai:gpt-4o")
    assert gpt.key == "openai:gpt-4o"
    events: list[BreakerTransition] = []
    registry.add_listener(events.append)  # reaches breakers made before and after
    assert registry.get("openai:gpt-4o") is gpt
    assert gpt.config == CircuitBreakerConfig()
    email = registry.get("tool:send_email")
    assert email.config is special
    assert "tool:send_email" in registry
    fail(email)
    assert events == [BreakerTransition("tool:send_email", CLOSED, OPEN, clock.now())]
    assert set(registry.statistics()) == {"openai:gpt-4o", "tool:send_email"}
    assert registry.statistics()["tool:send_email"].state is OPEN
    trip(gpt)
    assert events[-1] == BreakerTransition("openai:gpt-4o", CLOSED, OPEN, clock.now())

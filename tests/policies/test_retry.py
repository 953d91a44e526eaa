"""Retry: the pure decision core, backoff bounds and the async driver in virtual time."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stalwart._clock import FakeClock
from stalwart.errors import (
    CircuitOpenError,
    ConfigurationError,
    RetryExhaustedError,
    StalwartError,
)
from stalwart.policies import (
    Attempt,
    GiveUp,
    Retry,
    RetryEvent,
    RetryOn,
    RetryState,
    Sleep,
    call_with_retry,
    deadline_scope,
    decide,
)


class Flaky(StalwartError):
    """A retryable failure for the tests."""

    retryable = True


class NoRetryFlag(Exception):
    """A foreign error that says it must not be retried."""

    retryable = False


def failing(errors: list[BaseException]) -> Callable[[], Awaitable[str]]:
    """An attempt function raising the given errors in turn, then returning "ok"."""
    queue = list(errors)

    async def attempt() -> str:
        if queue:
            raise queue.pop(0)
        return "ok"

    return attempt


# -- configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": True},
        {"initial": -1.0},
        {"multiplier": 0.5},
        {"multiplier": math.inf},
        {"max_backoff": -1.0},
        {"initial": 10.0, "max_backoff": 5.0},
        {"max_elapsed": 0.0},
        {"max_elapsed": "soon"},
        {"initial": math.nan},
        {"jitter": "partial"},
        {"max_attempts": None, "initial": 0.0},
        {"retry_on": 3},
    ],
)
def test_bad_config_is_rejected(kwargs: dict[str, object]) -> None:
    """Nonsensical retry settings raise ConfigurationError at construction."""
    with pytest.raises(ConfigurationError):
        Retry(**kwargs)  # type: ignore[arg-type]


def test_timedeltas_are_stored_as_seconds() -> None:
    """A timedelta config equals the same config in float seconds."""
    by_delta = Retry(initial=timedelta(milliseconds=500), max_backoff=timedelta(minutes=1),
                     max_elapsed=timedelta(hours=1))
    assert by_delta == Retry(initial=0.5, max_backoff=60.0, max_elapsed=3600.0)
    assert by_delta.initial == 0.5


def test_ceiling_grows_geometrically_to_the_cap() -> None:
    """The ceiling is initial * multiplier ** (n - 1), capped at max_backoff."""
    policy = Retry(initial=1.0, multiplier=2.0, max_backoff=10.0)
    assert [policy.ceiling(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.ceiling(100_000) == 10.0
    assert Retry(max_backoff=None).ceiling(100_000) == math.inf


def test_full_jitter_is_uniform_below_the_ceiling() -> None:
    """Full jitter draws exactly rng.uniform(0, ceiling) from the injected rng."""
    policy = Retry(initial=1.0, multiplier=3.0, max_backoff=100.0)
    assert policy.backoff(3, random.Random(7)) == random.Random(7).uniform(0.0, 9.0)


def test_equal_and_no_jitter() -> None:
    """Equal jitter stays in [ceiling/2, ceiling]; no jitter is the ceiling itself."""
    rng = random.Random(1)
    for _ in range(100):
        assert 4.0 <= Retry(jitter="equal").backoff(4, rng) <= 8.0
    assert Retry(jitter="none").backoff(4, rng) == 8.0


# -- properties of the decision core ---------------------------------------------------

@st.composite
def policies(draw: st.DrawFn) -> Retry:
    """Valid Retry policies (unlimited attempts need a non-zero initial backoff)."""
    max_attempts = draw(st.none() | st.integers(1, 50))
    positive = st.floats(0.001, 100.0)
    return Retry(
        max_attempts=max_attempts,
        initial=draw(positive if max_attempts is None else positive | st.just(0.0)),
        multiplier=draw(st.floats(1.0, 10.0)),
        max_backoff=draw(st.none() | st.floats(100.0, 10_000.0)),
        jitter=draw(st.sampled_from(["full", "equal", "none"])),
    )


@given(policy=policies(), attempt=st.integers(1, 2_000), seed=st.integers(0, 2**32))
def test_backoff_bounds(policy: Retry, attempt: int, seed: int) -> None:
    """Every backoff lies in [0, min(cap, initial * multiplier ** (n - 1))]."""
    sleep = policy.backoff(attempt, random.Random(seed))
    initial, cap = policy.initial, policy.max_backoff
    assert isinstance(initial, float)
    assert cap is None or isinstance(cap, float)
    try:
        raw = initial * policy.multiplier ** (attempt - 1) if initial else 0.0
    except OverflowError:
        raw = math.inf
    assert 0.0 <= sleep <= min(math.inf if cap is None else cap, raw)
    assert policy.ceiling(attempt) == min(math.inf if cap is None else cap, raw)


@given(
    policy=policies(),
    attempt=st.integers(1, 60),
    retry_after=st.floats(0.0, 1_000.0),
    seed=st.integers(0, 2**32),
)
def test_sleep_is_never_shorter_than_retry_after(
    policy: Retry, attempt: int, retry_after: float, seed: int
) -> None:
    """A retried error's retry_after is a floor: sleep = max(jittered, retry_after)."""
    state = RetryState(attempt=attempt, first_attempt_at=0.0)
    decision = decide(policy, state, Flaky(retry_after=retry_after), 0.0, random.Random(seed))
    if policy.max_attempts is not None and attempt >= policy.max_attempts:
        assert decision == GiveUp(f"max_attempts={policy.max_attempts} reached", exhausted=True)
        return
    assert isinstance(decision, Sleep)
    assert decision.next_attempt == attempt + 1
    assert retry_after <= decision.seconds <= max(retry_after, policy.ceiling(attempt))


@given(
    policy=policies(),
    attempt=st.integers(1, 60),
    error=st.sampled_from(
        [
            StalwartError("no", retryable=False),
            NoRetryFlag(),
            Flaky("told not to", retryable=False),
        ]
    ),
)
def test_non_retryable_errors_are_never_retried(
    policy: Retry, attempt: int, error: Exception
) -> None:
    """retryable=False wins over any retry_on predicate, even one that says yes."""
    always = Retry(retry_on=RetryOn.where(lambda e: True, "always"))
    for p in (policy, always):
        decision = decide(p, RetryState(attempt=attempt, first_attempt_at=0.0), error, 0.0,
                          random.Random(0))
        assert isinstance(decision, GiveUp)
        assert not decision.exhausted


@given(
    policy=policies(),
    attempt=st.integers(1, 60),
    open_for=st.floats(0.0, 600.0),
    seed=st.integers(0, 2**32),
)
def test_an_open_breaker_is_waited_out_with_jitter_after_its_open_time(
    policy: Retry, attempt: int, open_for: float, seed: int
) -> None:
    """A CircuitOpenError is retried after the breaker's open time *plus* the jittered
    backoff (callers reach its half-open trial spread out, not all at once)."""
    error = CircuitOpenError("open", key="k", state="open", retry_after=open_for)
    state = RetryState(attempt=attempt, first_attempt_at=0.0)
    decision = decide(policy, state, error, 0.0, random.Random(seed))
    if policy.max_attempts is not None and attempt >= policy.max_attempts:
        assert decision == GiveUp(f"max_attempts={policy.max_attempts} reached", exhausted=True)
        return
    assert isinstance(decision, Sleep)
    assert decision.seconds == open_for + policy.backoff(attempt, random.Random(seed))
    assert open_for <= decision.seconds <= open_for + policy.ceiling(attempt)


def test_a_half_open_breaker_without_trial_calls_left_is_waited_out_by_the_backoff() -> None:
    """Half-open with every trial call taken (no retry_after): the plain backoff."""
    error = CircuitOpenError("half", key="k", state="half_open")
    policy = Retry(max_attempts=3, initial=2.0, jitter="none")
    decision = decide(policy, RetryState(attempt=1, first_attempt_at=0.0), error, 0.0,
                      random.Random(0))
    assert decision == Sleep(2.0, 2)


def test_no_attempt_starts_once_the_deadline_has_passed() -> None:
    """Asked for a first (or resumed) attempt with no time left, Retry gives up."""
    policy = Retry(max_attempts=5)
    state = RetryState(attempt=2, first_attempt_at=0.0)
    assert decide(policy, state, None, 0.0, random.Random(0),
                  deadline_remaining=0.0) == GiveUp("the enclosing deadline has passed",
                                                    exhausted=True)
    assert decide(policy, state, None, 0.0, random.Random(0),
                  deadline_remaining=0.5) == Attempt(3)


@given(
    max_elapsed=st.floats(0.5, 500.0),
    initial=st.floats(0.001, 50.0),
    seed=st.integers(0, 2**32),
)
def test_no_attempt_starts_after_max_elapsed(max_elapsed: float, initial: float, seed: int) -> None:
    """Simulated to the end, every attempt starts within max_elapsed of the first."""
    policy = Retry(max_attempts=None, initial=initial, max_backoff=max(initial, 60.0),
                   max_elapsed=max_elapsed)
    rng = random.Random(seed)
    now, state = 1000.0, RetryState(first_attempt_at=1000.0)
    starts = []
    for _ in range(10_000):
        decision = decide(policy, state, None, now, rng)
        assert isinstance(decision, Attempt)
        state = state.started()
        starts.append(now)
        decision = decide(policy, state, Flaky(), now, rng)
        if isinstance(decision, GiveUp):
            assert decision.exhausted
            break
        assert isinstance(decision, Sleep)
        now += decision.seconds
    else:
        raise AssertionError("never gave up")
    assert all(start - 1000.0 <= max_elapsed for start in starts)


def test_decide_without_error_asks_for_the_next_attempt() -> None:
    """error=None means "may I start the next attempt": Attempt(n + 1) or GiveUp."""
    policy = Retry(max_attempts=3)
    fresh = RetryState(first_attempt_at=0.0)
    assert decide(policy, fresh, None, 0.0, random.Random()) == Attempt(1)
    done = RetryState(attempt=3, first_attempt_at=0.0)
    assert decide(policy, done, None, 0.0, random.Random()) == GiveUp(
        "max_attempts=3 reached", exhausted=True
    )


def test_default_predicate_retries_transient_errors_only() -> None:
    """By default OSError-family and retryable StalwartErrors retry; others do not."""
    transient = RetryOn.transient()
    assert transient(TimeoutError())
    assert transient(ConnectionResetError())
    assert transient(OSError())
    assert transient(Flaky())
    assert not transient(StalwartError())
    assert not transient(ValueError())
    assert not transient(KeyError())


def test_predicates_combine_with_or_and_and() -> None:
    """RetryOn | RetryOn retries either; & retries only both."""
    either = RetryOn.types(ValueError) | RetryOn.types(KeyError)
    both = RetryOn.types(LookupError) & RetryOn.where(lambda e: "x" in str(e), "has x")
    assert either(ValueError())
    assert either(KeyError())
    assert not either(TypeError())
    assert both(KeyError("x"))
    assert not both(KeyError("y"))
    assert not both(ValueError("x"))
    assert either.description == "(types(ValueError) | types(KeyError))"


def test_control_flow_is_never_retried() -> None:
    """BaseExceptions that are not Exceptions (cancellation) end the loop unwrapped."""
    decision = decide(Retry(), RetryState(attempt=1, first_attempt_at=0.0),
                      asyncio.CancelledError(), 0.0, random.Random())
    assert isinstance(decision, GiveUp)
    assert not decision.exhausted


# -- the async driver --------------------------------------------------------------------


async def test_retries_until_success_in_exact_virtual_time() -> None:
    """Two failures then success: sleeps 1 s and 2 s (no jitter), events in order."""
    clock = FakeClock(start=0.0, autojump=True)
    events: list[RetryEvent] = []
    policy = Retry(max_attempts=5, initial=1.0, multiplier=2.0, jitter="none")
    result = await call_with_retry(policy, failing([Flaky("a"), Flaky("b")]), clock=clock,
                                   rng=random.Random(0), on_event=events.append)
    assert result == "ok"
    assert clock.monotonic() == 3.0
    assert [(e.kind, e.attempt, e.at, e.sleep) for e in events] == [
        ("attempt", 1, 0.0, None),
        ("retry", 1, 0.0, 1.0),
        ("attempt", 2, 1.0, None),
        ("retry", 2, 1.0, 2.0),
        ("attempt", 3, 3.0, None),
    ]


async def test_non_retryable_error_is_reraised_as_is_at_once() -> None:
    """A non-retryable error propagates unchanged after one attempt."""
    clock = FakeClock(autojump=True)
    error = ValueError("bad input")
    events: list[RetryEvent] = []
    with pytest.raises(ValueError) as caught:
        await call_with_retry(Retry(), failing([error]), clock=clock, rng=random.Random(),
                              on_event=events.append)
    assert caught.value is error
    assert [e.kind for e in events] == ["attempt", "give_up"]
    assert clock.monotonic() == 0.0


async def test_exhaustion_raises_retry_exhausted_with_the_chain() -> None:
    """Out of attempts: RetryExhaustedError with attempts, errors and __cause__."""
    clock = FakeClock(autojump=True)
    errors = [Flaky("1"), Flaky("2"), Flaky("3", retry_after=4.0)]
    with pytest.raises(RetryExhaustedError) as caught:
        await call_with_retry(Retry(max_attempts=3, initial=0.5, jitter="none"),
                              failing(list(errors)), clock=clock, rng=random.Random())
    exhausted = caught.value
    assert exhausted.attempts == 3
    assert exhausted.errors == tuple(errors)
    assert exhausted.__cause__ is errors[-1]
    assert exhausted.retry_after == 4.0
    assert not exhausted.retryable
    assert clock.monotonic() == 0.5 + 1.0


async def test_retry_after_is_honoured() -> None:
    """A Retry-After of 10 s overrides a 1 s backoff."""
    clock = FakeClock(autojump=True)
    await call_with_retry(Retry(initial=1.0, jitter="none"), failing([Flaky(retry_after=10.0)]),
                          clock=clock, rng=random.Random())
    assert clock.monotonic() == 10.0


async def test_max_elapsed_stops_the_driver() -> None:
    """With max_elapsed=10 and 4 s sleeps, attempts start at 0, 4 and 8, then it stops."""
    clock = FakeClock(start=0.0, autojump=True)
    starts: list[float] = []

    async def attempt() -> None:
        starts.append(clock.monotonic())
        raise Flaky()

    policy = Retry(max_attempts=None, initial=4.0, multiplier=1.0, jitter="none",
                   max_elapsed=10.0)
    with pytest.raises(RetryExhaustedError, match="max_elapsed"):
        await call_with_retry(policy, attempt, clock=clock, rng=random.Random())
    assert starts == [0.0, 4.0, 8.0]


async def test_resumed_run_continues_the_attempt_count() -> None:
    """start_attempt=3 under max_attempts=3 makes exactly one more attempt."""
    clock = FakeClock(autojump=True)
    events: list[RetryEvent] = []
    with pytest.raises(RetryExhaustedError) as caught:
        await call_with_retry(Retry(max_attempts=3), failing([Flaky()]), clock=clock,
                              rng=random.Random(), on_event=events.append, start_attempt=3)
    assert caught.value.attempts == 3
    assert [(e.kind, e.attempt) for e in events] == [("attempt", 3), ("give_up", 3)]


async def test_resume_past_the_limit_gives_up_without_calling() -> None:
    """start_attempt beyond max_attempts raises at once and never calls fn."""
    clock = FakeClock(autojump=True)
    calls: list[int] = []

    async def attempt() -> None:
        calls.append(1)

    with pytest.raises(RetryExhaustedError) as caught:
        await call_with_retry(Retry(max_attempts=2), attempt, clock=clock, rng=random.Random(),
                              start_attempt=3)
    assert calls == []
    assert caught.value.attempts == 2
    assert caught.value.__cause__ is None
    with pytest.raises(ConfigurationError):
        await call_with_retry(Retry(), attempt, clock=clock, rng=random.Random(), start_attempt=0)


async def test_resume_keeps_the_elapsed_budget() -> None:
    """first_attempt_at from the journal counts toward max_elapsed after a resume."""
    clock = FakeClock(start=100.0, autojump=True)
    policy = Retry(max_attempts=None, initial=5.0, jitter="none", max_elapsed=10.0)
    with pytest.raises(RetryExhaustedError):
        await call_with_retry(policy, failing([Flaky()]), clock=clock, rng=random.Random(),
                              start_attempt=2, first_attempt_at=94.0)
    assert clock.monotonic() == 0.0


async def test_async_event_callbacks_are_awaited() -> None:
    """An on_event coroutine function is awaited before the driver goes on."""
    clock = FakeClock(autojump=True)
    seen: list[str] = []

    async def journal(event: RetryEvent) -> None:
        await asyncio.sleep(0)
        seen.append(event.kind)

    await call_with_retry(Retry(initial=0.0), failing([Flaky()]), clock=clock,
                          rng=random.Random(), on_event=journal)
    assert seen == ["attempt", "retry", "attempt"]


async def test_retry_gives_up_before_outliving_the_deadline() -> None:
    """Inside a 5 s deadline, a retry that would sleep 8 s gives up at once."""
    clock = FakeClock(start=0.0, autojump=True)
    policy = Retry(max_attempts=5, initial=8.0, jitter="none")
    async with deadline_scope(5.0, clock=clock):
        with pytest.raises(RetryExhaustedError, match="deadline"):
            await call_with_retry(policy, failing([Flaky()]), clock=clock, rng=random.Random())
    assert clock.monotonic() == 0.0


async def test_cancellation_is_not_retried() -> None:
    """A cancelled attempt cancels the whole retry loop."""
    clock = FakeClock()

    async def attempt() -> None:
        await clock.sleep(100.0)

    task = asyncio.create_task(
        call_with_retry(Retry(), attempt, clock=clock, rng=random.Random())
    )
    await clock.advance(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

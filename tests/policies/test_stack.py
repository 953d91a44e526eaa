"""The per-attempt policy layers, each alone and composed, in virtual time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stalwart._clock import FakeClock
from stalwart.errors import (
    BulkheadFullError,
    CallTimeoutError,
    CircuitOpenError,
    InvalidRequestError,
    ProviderOverloadedError,
    ProviderQuota,
    RateLimitedError,
    ThrottledError,
)
from stalwart.policies import (
    Backpressure,
    BreakerState,
    Bulkhead,
    BulkheadConfig,
    CircuitBreaker,
    CircuitBreakerConfig,
    RateLimit,
    RateLimiter,
)
from stalwart.policies._stack import (
    BreakerLayer,
    BulkheadLayer,
    CallAttempt,
    CheckLayer,
    Next,
    RateLimitLayer,
    TimeoutLayer,
    compose,
)
from stalwart.policies._timeout import call_deadline

P = {"provider": "p", "model": "m"}


def attempt(number: int = 1, tokens: int = 0) -> CallAttempt:
    return CallAttempt("p:m", number, tokens)


def answering(clock: FakeClock, value: Any = "ok", *, takes: float = 0.0) -> Next:
    async def call(a: CallAttempt) -> Any:
        if takes:
            await clock.sleep(takes)
        return value
    return call


def raising(exc: BaseException) -> Next:
    async def call(a: CallAttempt) -> Any:
        raise exc
    return call


def tight_breaker(clock: FakeClock, **kwargs: Any) -> CircuitBreaker:
    config = CircuitBreakerConfig(window_size=4, minimum_calls=4, wait_in_open=30.0,
                                  permitted_calls_in_half_open=1, **kwargs)
    return CircuitBreaker(config, clock=clock, key="p:m")


# -- compose ---------------------------------------------------------------------------


async def test_compose_nests_the_layers_in_the_order_given() -> None:
    """layers[0] is outermost: it enters first and leaves last."""
    trace: list[str] = []

    class Mark:
        def __init__(self, name: str) -> None:
            self.name = name

        async def __call__(self, a: CallAttempt, inner: Next) -> Any:
            trace.append(f"{self.name}>")
            result = await inner(a)
            trace.append(f"<{self.name}")
            return result

    async def call(a: CallAttempt) -> str:
        trace.append("call")
        return "ok"

    assert await compose([Mark("a"), Mark("b")], call)(attempt()) == "ok"
    assert trace == ["a>", "b>", "call", "<b", "<a"]


# -- Timeout ---------------------------------------------------------------------------


async def test_the_timeout_layer_cuts_a_slow_call_and_marks_its_time() -> None:
    """A call past per_attempt raises CallTimeoutError at exactly that time; started and
    ended bracket the call itself."""
    clock = FakeClock(start=0.0, autojump=True)
    a = attempt()
    with pytest.raises(CallTimeoutError):
        await TimeoutLayer(1.0, clock=clock)(a, answering(clock, takes=60.0))
    assert (a.started, a.ended, a.duration, a.made) == (0.0, 1.0, 1.0, True)


async def test_the_timeout_layer_cuts_a_call_at_the_calls_deadline() -> None:
    """Under a call deadline 2 s away, a per-attempt limit of 10 s cuts at 2 s."""
    clock = FakeClock(start=0.0, autojump=True)
    a = attempt()
    with pytest.raises(CallTimeoutError), call_deadline(2.0, clock=clock):
        await TimeoutLayer(10.0, clock=clock)(a, answering(clock, takes=60.0))
    assert clock.monotonic() == 2.0 and a.duration == 2.0


async def test_past_the_deadline_the_timeout_layer_makes_no_call() -> None:
    """No time left: CallTimeoutError before the call, which is marked as not made."""
    clock = FakeClock(start=0.0)
    a = attempt()
    with pytest.raises(CallTimeoutError), call_deadline(0.0, clock=clock):
        await TimeoutLayer(None, clock=clock)(a, answering(clock))
    assert not a.made


# -- CircuitBreaker ----------------------------------------------------------------------


async def test_the_breaker_records_the_calls_own_time_not_the_waits_before_it() -> None:
    """RateLimit(6/min, burst=1) makes the 10th of ten instant calls wait 90 s: the breaker
    (slow after 5 s) sees ten 0 s calls and stays closed."""
    clock = FakeClock(start=0.0, autojump=True)
    breaker = tight_breaker(clock, slow_call_duration=5.0)
    limiter = RateLimiter(RateLimit(requests_per_minute=6, burst=1), clock=clock)
    stack = compose([BreakerLayer(breaker),
                     RateLimitLayer(Backpressure(clock=clock), limiter),
                     TimeoutLayer(None, clock=clock)], answering(clock))
    assert await asyncio.gather(*(stack(attempt()) for _ in range(10))) == ["ok"] * 10
    assert clock.monotonic() == 90.0
    stats = breaker.statistics()
    assert (stats.state, stats.slow_calls, stats.calls_in_window) == (BreakerState.CLOSED, 0, 4)


async def test_the_breaker_counts_what_the_classifier_says() -> None:
    """Four 429s and four refused requests leave it closed (ignored / answered); four
    503s or four timeouts open it."""
    clock = FakeClock(start=0.0, autojump=True)
    for error, opens in [(RateLimitedError("429", retry_after=1.0, **P), False),
                         (InvalidRequestError("400", **P), False),
                         (ProviderOverloadedError("503", **P), True),
                         (CallTimeoutError("slow", timeout=1.0), True)]:
        breaker = tight_breaker(clock)
        layer = BreakerLayer(breaker)
        for _ in range(4):
            with pytest.raises(type(error)):
                await layer(attempt(), compose([TimeoutLayer(None, clock=clock)],
                                               raising(error)))
        assert (breaker.state is BreakerState.OPEN) is opens, error


async def test_a_call_that_was_never_made_gives_its_permit_back() -> None:
    """A half-open breaker's one trial permit, taken by a call a limit then refused, is
    given back for the next caller; the refusal is not an outcome."""
    clock = FakeClock(start=0.0, autojump=True)
    breaker = tight_breaker(clock)
    for _ in range(4):
        breaker.acquire()
        breaker.on_error(0.0, ProviderOverloadedError("503", **P))
    await clock.sleep(30.0)
    layer = BreakerLayer(breaker)
    with pytest.raises(ThrottledError):
        await layer(attempt(), raising(ThrottledError("no", key="k")))
    assert breaker.state is BreakerState.HALF_OPEN
    assert await layer(attempt(), compose([TimeoutLayer(None, clock=clock)],
                                          answering(clock))) == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_an_open_breaker_rejects_before_anything_runs() -> None:
    """OPEN: CircuitOpenError with the open time left; the inner layers never run."""
    clock = FakeClock(start=0.0)
    breaker = tight_breaker(clock)
    for _ in range(4):
        breaker.acquire()
        breaker.on_error(0.0, ProviderOverloadedError("503", **P))
    ran: list[int] = []

    async def inner(a: CallAttempt) -> None:
        ran.append(1)

    with pytest.raises(CircuitOpenError) as caught:
        await BreakerLayer(breaker)(attempt(), inner)
    assert caught.value.retry_after == 30.0 and ran == []


async def test_a_cancelled_call_is_no_outcome() -> None:
    """Cancellation gives the permit back and records nothing."""
    clock = FakeClock(start=0.0)
    breaker = tight_breaker(clock)
    with pytest.raises(asyncio.CancelledError):
        await BreakerLayer(breaker)(attempt(), raising(asyncio.CancelledError()))
    assert breaker.statistics().calls_in_window == 0


# -- outcome check -----------------------------------------------------------------------


async def test_a_rejected_check_fails_the_attempt_and_a_kept_one_counts_for_the_breaker(
) -> None:
    """reject=True raises the check's failure; reject=False keeps the result and the
    breaker still records a failure (four such results open it)."""
    clock = FakeClock(start=0.0)
    wrong = ValueError("wrong")

    def check(a: CallAttempt, result: Any) -> BaseException | None:
        return wrong if result == "bad" else None

    inner = compose([TimeoutLayer(None, clock=clock)], answering(clock, "bad"))
    with pytest.raises(ValueError, match="wrong"):
        await CheckLayer(check, reject=True)(attempt(), inner)
    breaker = tight_breaker(clock)
    stack = compose([BreakerLayer(breaker), CheckLayer(check, reject=False)],
                    compose([TimeoutLayer(None, clock=clock)], answering(clock, "bad")))
    for _ in range(4):
        a = attempt()
        assert await stack(a) == "bad"
        assert a.check_failure is wrong
    assert breaker.state is BreakerState.OPEN
    ok = attempt()
    assert await CheckLayer(check, reject=False)(ok, answering(clock, "good")) == "good"
    assert ok.check_failure is None


# -- RateLimit -------------------------------------------------------------------------


async def test_a_429_holds_every_other_caller_for_its_retry_after() -> None:
    """One call answered 429 (Retry-After 8): the next caller waits until t=8 at the gate,
    probes, and is answered."""
    clock = FakeClock(start=0.0, autojump=True)
    gate = Backpressure(clock=clock)
    layer = RateLimitLayer(gate, None)
    timed = TimeoutLayer(None, clock=clock)
    with pytest.raises(RateLimitedError):
        await layer(attempt(), compose([timed], raising(
            RateLimitedError("429", retry_after=8.0, **P))))
    assert await layer(attempt(), compose([timed], answering(clock))) == "ok"
    assert clock.monotonic() == 8.0
    assert gate.statistics().holds == 1


async def test_a_429_that_names_no_wait_holds_for_the_default() -> None:
    """No Retry-After: the gate holds for its default hold (1 s)."""
    clock = FakeClock(start=0.0, autojump=True)
    gate = Backpressure(clock=clock)
    layer = RateLimitLayer(gate, None)
    timed = TimeoutLayer(None, clock=clock)
    with pytest.raises(RateLimitedError):
        await layer(attempt(), compose([timed], raising(RateLimitedError("429", **P))))
    await layer(attempt(), compose([timed], answering(clock)))
    assert clock.monotonic() == 1.0


async def test_only_a_429_holds_the_gate() -> None:
    """A 503 and a refusal before the call leave the gate flowing."""
    clock = FakeClock(start=0.0, autojump=True)
    gate = Backpressure(clock=clock)
    layer = RateLimitLayer(gate, None)
    timed = TimeoutLayer(None, clock=clock)
    with pytest.raises(ProviderOverloadedError):
        await layer(attempt(), compose([timed], raising(ProviderOverloadedError("5", **P))))
    with pytest.raises(ThrottledError):
        await layer(attempt(), raising(ThrottledError("no", key="k")))
    assert gate.statistics().holds == 0


async def test_a_429s_quota_adapts_the_rate_limiter() -> None:
    """A 429 reporting a 30/min quota with nothing left lowers a 600/min estimate to 30
    and empties the bucket: the next call waits 2 s after the hold."""
    clock = FakeClock(start=0.0, autojump=True)
    limiter = RateLimiter(RateLimit(requests_per_minute=600), clock=clock)
    layer = RateLimitLayer(Backpressure(clock=clock), limiter)
    timed = TimeoutLayer(None, clock=clock)
    quota = ProviderQuota(requests_limit=30, requests_remaining=0)
    with pytest.raises(RateLimitedError):
        await layer(attempt(), compose([timed], raising(
            RateLimitedError("429", retry_after=1.0, quota=quota, **P))))
    assert limiter.statistics().requests_per_minute == 30.0
    await layer(attempt(), compose([timed], answering(clock)))
    assert clock.monotonic() == 2.0


async def test_a_successful_call_settles_the_tokens_it_really_used() -> None:
    """Estimated 100 tokens, used 40: 60 go back to the token bucket."""
    clock = FakeClock(start=0.0)
    limiter = RateLimiter(RateLimit(tokens_per_minute=1000), clock=clock)
    layer = RateLimitLayer(Backpressure(clock=clock), limiter, actual_tokens=lambda r: 40)
    await layer(attempt(tokens=100), answering(clock))
    assert limiter.statistics().tokens_available == 960.0


async def test_max_wait_bounds_the_wait_at_the_gate() -> None:
    """The RateLimit's max_wait applies to a 429's hold too."""
    clock = FakeClock(start=0.0, autojump=True)
    layer = RateLimitLayer(Backpressure(clock=clock), None, max_wait=2.0)
    timed = TimeoutLayer(None, clock=clock)
    with pytest.raises(RateLimitedError):
        await layer(attempt(), compose([timed], raising(
            RateLimitedError("429", retry_after=8.0, **P))))
    with pytest.raises(ThrottledError):
        await layer(attempt(), answering(clock))


# -- Bulkhead --------------------------------------------------------------------------


async def test_the_bulkhead_layer_holds_a_slot_for_the_call_and_gives_it_back() -> None:
    """Two slots, five calls of 1 s: at most two at once, all slots free after."""
    clock = FakeClock(start=0.0, autojump=True)
    bulkhead = Bulkhead(BulkheadConfig(max_concurrent=2), clock=clock)
    layer = BulkheadLayer(bulkhead, clock=clock)
    await asyncio.gather(*(layer(attempt(), answering(clock, takes=1.0)) for _ in range(5)))
    assert clock.monotonic() == 3.0
    stats = bulkhead.statistics()
    assert (stats.max_seen, stats.active) == (2, 0)


async def test_a_bulkhead_queue_ends_at_the_calls_deadline() -> None:
    """Queued for a slot under a 2 s call deadline: BulkheadFullError at t=2 (no call was
    made, so no timeout of the dependency's), and the queue is left clean."""
    clock = FakeClock(start=0.0, autojump=True)
    bulkhead = Bulkhead(BulkheadConfig(max_concurrent=1), clock=clock)
    layer = BulkheadLayer(bulkhead, clock=clock)
    holder = asyncio.create_task(layer(attempt(), answering(clock, takes=10.0)))
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFullError) as caught, call_deadline(2.0, clock=clock):
        await layer(attempt(), answering(clock))
    assert caught.value.reason == "deadline" and clock.monotonic() == 2.0
    assert bulkhead.statistics().queued == 0
    await holder


async def test_a_timeout_before_the_call_started_is_not_held_against_the_dependency(
) -> None:
    """The call's deadline passed before the call could start: CallTimeoutError (a
    dependency failure when a call times out), but no call was made, so the breaker
    gives the permit back and records nothing."""
    clock = FakeClock(start=0.0)
    breaker = tight_breaker(clock)
    stack = compose([BreakerLayer(breaker), TimeoutLayer(None, clock=clock)], answering(clock))
    with pytest.raises(CallTimeoutError), call_deadline(0.0, clock=clock):
        await stack(attempt())
    assert breaker.statistics().calls_in_window == 0

"""Token buckets and the requests/tokens-per-minute limiter, with exact virtual-time waits."""

from __future__ import annotations

import asyncio
import math

import pytest

from stalwart._clock import FakeClock
from stalwart.errors import ConfigurationError, ProviderQuota, ThrottledError
from stalwart.policies import (
    RateLimit,
    RateLimiter,
    RateLimiterRegistry,
    TokenBucket,
    deadline_scope,
)

# -- the pure bucket ---------------------------------------------------------------------


def test_bucket_gives_tokens_then_says_how_long_to_wait() -> None:
    """try_take takes when it can and otherwise returns the exact wait, taking nothing."""
    bucket = TokenBucket(10, 2.0, now=0.0)
    assert bucket.try_take(8, 0.0) == 0.0
    assert bucket.try_take(4, 0.0) == 1.0  # 2 left, 2 more at 2/s
    assert bucket.available(0.0) == 2.0
    assert bucket.try_take(4, 1.0) == 0.0
    assert bucket.available(1.0) == 0.0


def test_bucket_refills_only_to_capacity() -> None:
    """An idle bucket holds at most its capacity."""
    bucket = TokenBucket(5, 1.0, now=0.0, tokens=0)
    assert bucket.available(3.0) == 3.0
    assert bucket.available(1000.0) == 5.0


def test_bucket_reservations_queue_up_as_debt() -> None:
    """reserve takes at once and returns the wait until the debt is paid."""
    bucket = TokenBucket(1, 0.5, now=0.0)
    assert [bucket.reserve(1, 0.0) for _ in range(4)] == [0.0, 2.0, 4.0, 6.0]
    assert bucket.available(0.0) == -3.0


def test_bucket_adjust_refunds_up_to_capacity_and_charges_into_debt() -> None:
    """adjust(+n) refunds (capped); adjust(-n) charges, possibly below zero."""
    bucket = TokenBucket(10, 1.0, now=0.0)
    bucket.adjust(5, 0.0)
    assert bucket.available(0.0) == 10.0
    bucket.adjust(-15, 0.0)
    assert bucket.available(0.0) == -5.0
    assert bucket.wait_time(1, 0.0) == 6.0


def test_requests_larger_than_the_bucket_never_fit() -> None:
    """Asking for more than the capacity waits forever: inf, and nothing is taken."""
    bucket = TokenBucket(10, 1.0, now=0.0)
    assert bucket.try_take(11, 0.0) == math.inf
    assert bucket.reserve(11, 0.0) == math.inf
    assert bucket.available(0.0) == 10.0
    with pytest.raises(ConfigurationError):
        TokenBucket(0, 1.0, now=0.0)


# -- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"requests_per_minute": 0},
        {"tokens_per_minute": -5},
        {"requests_per_minute": math.inf},
        {"tokens_per_minute": 1000, "burst": 5},
        {"requests_per_minute": 60, "burst": 0},
        {"requests_per_minute": 60, "max_wait": -1.0},
    ],
)
def test_bad_config_is_rejected(kwargs: dict[str, object]) -> None:
    """A limit needs a positive rate; burst needs a request rate; max_wait >= 0."""
    with pytest.raises(ConfigurationError):
        RateLimit(**kwargs)  # type: ignore[arg-type]


# -- the limiter in virtual time -------------------------------------------------------------


async def test_exactly_n_calls_in_the_first_minute() -> None:
    """60 rpm with burst 1: calls start at t = 0, 1, 2, ... and 60 fit in [0, 60)."""
    clock = FakeClock(start=0.0, autojump=True)
    limiter = RateLimiter(RateLimit(requests_per_minute=60, burst=1), clock=clock)
    starts: list[float] = []

    async def call() -> None:
        await limiter.acquire()
        starts.append(clock.monotonic())

    await asyncio.gather(*(call() for _ in range(90)))
    assert starts == [float(i) for i in range(90)]
    assert sum(1 for t in starts if t < 60.0) == 60


async def test_the_default_burst_keeps_every_sliding_minute_within_the_quota() -> None:
    """30 rpm with the default burst: calls start 2 s apart, so no sliding minute (the
    window a provider counts) holds more than 30 of 90 calls; the old default, a minute's
    quota as the burst, let 60 through in the first minute."""
    clock = FakeClock(start=0.0, autojump=True)
    limiter = RateLimiter(RateLimit(requests_per_minute=30), clock=clock)
    starts: list[float] = []

    async def call() -> None:
        await limiter.acquire()
        starts.append(clock.monotonic())

    await asyncio.gather(*(call() for _ in range(90)))
    assert starts == [2.0 * i for i in range(90)]
    most = max(sum(1 for t in starts if s - 60.0 < t <= s) for s in starts)
    assert most == 30


async def test_an_explicit_burst_lets_that_many_start_at_once() -> None:
    """10 rpm, burst 10: ten calls at once, then one every 6 s."""
    clock = FakeClock(start=0.0, autojump=True)
    limiter = RateLimiter(RateLimit(requests_per_minute=10, burst=10), clock=clock)
    starts: list[float] = []

    async def call() -> None:
        await limiter.acquire()
        starts.append(clock.monotonic())

    await asyncio.gather(*(call() for _ in range(13)))
    assert starts == [0.0] * 10 + [6.0, 12.0, 18.0]


async def test_token_limit_waits_exactly_for_the_tokens() -> None:
    """6000 tpm (100/s): after 5000 tokens, a 3000-token call waits 20 s."""
    clock = FakeClock(start=0.0, autojump=True)
    limiter = RateLimiter(RateLimit(tokens_per_minute=6000), clock=clock)
    assert await limiter.acquire(5000) == 0.0
    assert await limiter.acquire(3000) == 20.0
    assert clock.monotonic() == 20.0


async def test_both_limits_must_allow() -> None:
    """The wait is the longer of the request wait and the token wait."""
    clock = FakeClock(start=0.0, autojump=True)
    limiter = RateLimiter(RateLimit(requests_per_minute=60, burst=1, tokens_per_minute=600),
                          clock=clock)
    await limiter.acquire(600)
    assert await limiter.acquire(100) == 10.0  # tokens: 100 at 10/s; requests: 1 s
    assert clock.monotonic() == 10.0
    assert await limiter.acquire(0) == 0.0  # the request bucket refilled meanwhile
    assert await limiter.acquire(0) == 1.0  # only the request bucket applies


async def test_settle_refunds_and_charges_the_difference() -> None:
    """Over-estimates come back to the bucket; under-estimates are charged."""
    clock = FakeClock(start=0.0)
    limiter = RateLimiter(RateLimit(tokens_per_minute=6000), clock=clock)
    await limiter.acquire(3000)
    limiter.settle(3000, 1000)
    assert limiter.statistics().tokens_available == 5000.0
    limiter.settle(1000, 9000)
    assert limiter.statistics().tokens_available == -3000.0


async def test_max_wait_throttles_at_once_without_taking() -> None:
    """A wait beyond max_wait raises ThrottledError with the exact retry_after."""
    clock = FakeClock(start=0.0)
    limiter = RateLimiter(RateLimit(requests_per_minute=30, burst=1, max_wait=1.0),
                          clock=clock, key="openai:gpt-4o")
    await limiter.acquire()
    with pytest.raises(ThrottledError) as caught:
        await limiter.acquire()
    assert caught.value.retryable
    assert caught.value.retry_after == 2.0
    assert caught.value.key == "openai:gpt-4o"
    stats = limiter.statistics()
    assert (stats.acquired, stats.throttled, stats.requests_available) == (1, 1, 0.0)


async def test_oversized_requests_are_not_retryable() -> None:
    """More tokens than a minute's quota can never be sent: non-retryable ThrottledError."""
    limiter = RateLimiter(RateLimit(tokens_per_minute=1000), clock=FakeClock())
    with pytest.raises(ThrottledError) as caught:
        await limiter.acquire(1001)
    assert not caught.value.retryable
    with pytest.raises(ConfigurationError):
        await limiter.acquire(-1)


async def test_wait_past_the_deadline_throttles_at_once() -> None:
    """Inside a 5 s deadline, a 10 s wait fails now instead of sleeping."""
    clock = FakeClock(start=0.0, autojump=True)
    limiter = RateLimiter(RateLimit(requests_per_minute=6, burst=1), clock=clock)
    await limiter.acquire()
    async with deadline_scope(5.0, clock=clock):
        with pytest.raises(ThrottledError) as caught:
            await limiter.acquire()
    assert caught.value.retry_after == 10.0
    assert clock.monotonic() == 0.0


async def test_cancelled_waiter_gives_its_reservation_back() -> None:
    """A caller cancelled while waiting refunds what it reserved."""
    clock = FakeClock(start=0.0)
    limiter = RateLimiter(RateLimit(requests_per_minute=60, burst=1), clock=clock)
    await limiter.acquire()
    task = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    assert limiter.statistics().waiting == 1
    assert limiter.statistics().requests_available == -1.0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = limiter.statistics()
    assert (stats.waiting, stats.acquired, stats.requests_available) == (0, 1, 0.0)


async def test_cancelled_token_waiter_gives_its_tokens_back() -> None:
    """A token-only limiter refunds a cancelled waiter's tokens; settle is exact after."""
    clock = FakeClock(start=0.0)
    limiter = RateLimiter(RateLimit(tokens_per_minute=600), clock=clock, key="m")
    await limiter.acquire(600)
    task = asyncio.create_task(limiter.acquire(300))
    await asyncio.sleep(0)
    assert limiter.statistics().tokens_available == -300.0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = limiter.statistics()
    assert (stats.tokens_available, stats.requests_available, limiter.key) == (0.0, None, "m")


def test_settle_without_a_token_limit_does_nothing() -> None:
    """A request-only limiter ignores token settlements."""
    limiter = RateLimiter(RateLimit(requests_per_minute=60), clock=FakeClock())
    limiter.settle(100, 5000)
    assert limiter.statistics().tokens_available is None


def test_bucket_reports_its_shape() -> None:
    """A bucket exposes its capacity and refill rate."""
    bucket = TokenBucket(100, 2.5, now=0.0)
    assert (bucket.capacity, bucket.refill_per_second) == (100.0, 2.5)


async def test_statistics_count_waits() -> None:
    """statistics() reports acquisitions and the total wait handed out."""
    clock = FakeClock(start=0.0, autojump=True)
    limiter = RateLimiter(RateLimit(requests_per_minute=120, burst=1), clock=clock)
    for _ in range(3):
        await limiter.acquire()
    stats = limiter.statistics()
    assert (stats.acquired, stats.total_wait, stats.tokens_available) == (3, 1.0, None)


def test_registry_returns_none_for_unlimited_keys() -> None:
    """Limits are per key: unknown keys are unlimited unless a default is given."""
    clock = FakeClock()
    registry = RateLimiterRegistry(clock=clock,
                                   limits={"openai:gpt-4o": RateLimit(requests_per_minute=500)})
    limiter = registry.get("openai:gpt-4o")
    assert limiter is not None
    assert registry.get("openai:gpt-4o") is limiter
    assert registry.get("anthropic:claude") is None
    assert registry.get("x", RateLimit(tokens_per_minute=10)) is not None
    assert set(registry.statistics()) == {"openai:gpt-4o", "x"}
    assert "x" in registry
    assert "anthropic:claude" not in registry
    with_default = RateLimiterRegistry(clock=clock, default=RateLimit(requests_per_minute=1))
    assert with_default.get("anything") is not None


# -- adapting to what a 429 said ----------------------------------------------------------


def test_lowering_a_bucket_never_raises_it() -> None:
    """lower() takes the smaller capacity and rate; cap() only ever takes tokens away."""
    bucket = TokenBucket(10, 2.0, now=0.0)
    bucket.lower(capacity=20, refill_per_second=1.0, now=0.0)
    assert (bucket.capacity, bucket.refill_per_second) == (10, 1.0)
    bucket.lower(capacity=4, refill_per_second=5.0, now=0.0)
    assert (bucket.capacity, bucket.refill_per_second, bucket.available(0.0)) == (4, 1.0, 4)
    bucket.cap(-2.0, 0.0)
    assert bucket.available(0.0) == -2.0
    bucket.cap(3.0, 0.0)
    assert bucket.available(0.0) == -2.0
    with pytest.raises(ConfigurationError):
        bucket.lower(capacity=0, refill_per_second=1.0, now=0.0)


@pytest.mark.parametrize(("quota", "rpm", "tpm", "requests_left", "tokens_left"), [
    # the provider's quota is lower than our estimate: adopt it
    (ProviderQuota(requests_limit=30, tokens_limit=6000), 30.0, 6000.0, 1.0, 6000.0),
    # a higher quota than ours changes nothing (ours may be on purpose)
    (ProviderQuota(requests_limit=600, tokens_limit=90_000), 120.0, 12_000.0, 1.0, 12_000.0),
    # what is left caps the buckets
    (ProviderQuota(requests_remaining=0, tokens_remaining=500), 120.0, 12_000.0, 0.0, 500.0),
    # full again only after the reset: 3 s at 2/s is 6 short of whole; 30 s at 200/s
    (ProviderQuota(requests_reset=3.0, tokens_reset=30.0), 120.0, 12_000.0, -5.0, 6000.0),
])
def test_a_429s_headers_adapt_the_estimate(quota: ProviderQuota, rpm: float, tpm: float,
                                           requests_left: float, tokens_left: float) -> None:
    """RateLimiter.adapt: each header of a 429 moves the limiter as the provider says."""
    limiter = RateLimiter(RateLimit(requests_per_minute=120, tokens_per_minute=12_000),
                          clock=FakeClock(start=0.0))
    limiter.adapt(quota)
    stats = limiter.statistics()
    assert (stats.requests_per_minute, stats.tokens_per_minute) == (rpm, tpm)
    assert (stats.requests_available, stats.tokens_available) == (requests_left, tokens_left)


def test_a_quota_for_a_limit_not_set_is_ignored() -> None:
    """A token quota with only a request limit configured adapts only the requests."""
    limiter = RateLimiter(RateLimit(requests_per_minute=60), clock=FakeClock(start=0.0))
    limiter.adapt(ProviderQuota(requests_limit=6, tokens_limit=10, tokens_remaining=0))
    stats = limiter.statistics()
    assert (stats.requests_per_minute, stats.tokens_per_minute) == (6.0, None)

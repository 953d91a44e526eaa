"""The store's own retries come from the library's Retry decision core, in virtual time."""

from __future__ import annotations

import random

from stalwart import FakeClock, Runtime
from stalwart.engine._store_retry import STORE_RETRY, transient_retry
from stalwart.policies import Retry
from stalwart.store import INHERIT

DEADLOCK = RuntimeError("deadlock detected")


async def test_the_store_retry_waits_a_jittered_backoff_and_gives_up_after_five() -> None:
    """Attempts 1-4 wait a full-jitter backoff below 20, 40, 80, 160 ms on the clock and
    say try again; after the fifth it gives up at once."""
    clock = FakeClock(autojump=True)
    retry = transient_retry(clock, random.Random(7))
    waits = []
    for attempt in range(1, 5):
        before = clock.monotonic()
        assert await retry(attempt, DEADLOCK) is True
        waits.append(clock.monotonic() - before)
    assert all(0 <= w <= cap for w, cap in zip(waits, (0.02, 0.04, 0.08, 0.16),
                                                 strict=True))
    assert len(set(waits)) == 4  # jittered, not a fixed schedule
    before = clock.monotonic()
    assert await retry(5, DEADLOCK) is False
    assert clock.monotonic() == before


async def test_the_waits_are_the_decision_cores_for_the_same_random_source() -> None:
    """The same seed gives the same waits as Retry.backoff: one decision core."""
    clock = FakeClock(autojump=True)
    retry = transient_retry(clock, random.Random(3))
    mirror = random.Random(3)
    for attempt in range(1, 5):
        before = clock.monotonic()
        await retry(attempt, DEADLOCK)
        assert clock.monotonic() - before == STORE_RETRY.backoff(attempt, mirror)


async def test_a_policy_that_refuses_makes_the_store_give_up() -> None:
    """A policy of one attempt never waits."""
    clock = FakeClock(autojump=True)
    retry = transient_retry(clock, random.Random(1), Retry(max_attempts=1))
    assert await retry(1, DEADLOCK) is False


class RetryingStore:
    """A stand-in store with retries of its own (the InheritsRetry protocol)."""

    def __init__(self, retry: object = INHERIT) -> None:
        self.retry = retry
        self.url = "fake://"

    def inherit_retry(self, retry: object) -> None:
        if self.retry is INHERIT:
            self.retry = retry


def test_a_runtime_gives_its_store_its_retry_unless_the_store_has_one() -> None:
    """A store left to inherit gets the runtime's retry; one given None keeps None."""
    inheriting, disabled = RetryingStore(), RetryingStore(None)
    Runtime(inheriting, worker=False)  # type: ignore[arg-type]
    Runtime(disabled, worker=False)  # type: ignore[arg-type]
    assert callable(inheriting.retry)
    assert disabled.retry is None

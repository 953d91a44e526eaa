"""The store's own retries, decided by the library's :class:`~stalwart.Retry`.

A PostgreSQL store retries a transaction that the server aborted as a deadlock or a
serialization failure. The store imports nothing of the policies (``store/`` depends on
the foundation only); it takes a :data:`~stalwart.store.TransientRetry`, and a
:class:`~stalwart.Runtime` gives it this one: :func:`~stalwart.policies.decide` on
:data:`STORE_RETRY`, waiting on the runtime's clock with the runtime's random source —
the same decision core as every model and tool call's retries.
"""

from __future__ import annotations

import random

from .._clock import Clock
from ..policies import Retry, RetryOn, RetryState, Sleep, decide
from ..store import TransientRetry

__all__ = ["STORE_RETRY", "transient_retry"]

STORE_RETRY = Retry(max_attempts=5, initial=0.02, multiplier=2.0, max_backoff=0.16,
                    retry_on=RetryOn.where(lambda _: True, "asked by the store"))
"""Five attempts, backoff ceilings 20, 40, 80 and 160 ms, full jitter. The store asks only
about the failures it knows to be transient, so the policy retries whatever it is asked
about."""


def transient_retry(clock: Clock, rng: random.Random,
                    policy: Retry = STORE_RETRY) -> TransientRetry:
    """A store's retry: after attempt ``n`` failed, ``policy`` decides; a ``Sleep`` is
    slept on ``clock`` and answered ``True``, anything else ``False``. Attempts are
    counted by the store; ``policy.max_elapsed`` is not applied (each call sees one
    failure, not the first attempt's start)."""

    async def retry(attempt: int, error: BaseException) -> bool:
        now = clock.now()
        decision = decide(policy, RetryState(attempt=attempt, first_attempt_at=now),
                          error, now, rng)
        if not isinstance(decision, Sleep):
            return False
        await clock.sleep(decision.seconds)
        return True

    return retry

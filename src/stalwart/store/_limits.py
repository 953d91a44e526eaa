"""Cluster-wide limits kept in the store: token buckets and bulkhead slots.

Workers that share a store share their rate limits and bulkhead pools through it, so ten
workers do not get ten times a provider's quota. A store that can do this implements
:class:`LimitStore` next to :class:`~stalwart.store.Store`:

* **Token buckets** — one row per bucket key: ``tokens`` at ``updated_at``, refilled
  continuously at ``refill_per_second`` up to ``capacity``. :meth:`LimitStore.rate_reserve`
  refills, computes the wait and, when it is allowed, debits every bucket of the call (a
  request bucket and a token bucket, say) in one transaction — the same *reserve, then
  sleep off the debt* rule as the in-process :class:`~stalwart.policies.RateLimiter`, so a
  reservation costs one round trip however long the caller then waits, and callers are
  served in the order their reservations committed.
* **Bulkhead slots** — one row per slot holder with an expiry. A holder renews its
  slots while its call runs; the slots of a worker that died expire by themselves and are
  swept by the next acquire of the pool.

The arithmetic is here, pure (:func:`plan_reservation`, :func:`plan_adjustment`), so every
backend does exactly the same: it only locks the rows, calls these and writes the result.
Times are the callers' wall clocks (``Clock.now()``). A bucket's ``updated_at`` never moves
back, so a worker whose clock lags gets no refill rather than a double one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, final, runtime_checkable

from ..errors import ConfigurationError

__all__ = [
    "BucketDraw",
    "BucketState",
    "LimitStore",
    "Reservation",
    "plan_adjustment",
    "plan_reservation",
]


@final
@dataclass(frozen=True, slots=True)
class BucketDraw:
    """An amount to take from (or, for an adjustment, add to) one token bucket.

    The bucket is created full on first use; ``capacity`` and ``refill_per_second`` are
    the caller's config, stored with the bucket (the latest caller's wins).
    """

    key: str
    amount: float
    capacity: float
    refill_per_second: float

    def __post_init__(self) -> None:
        if not 0 < self.capacity < math.inf or not 0 < self.refill_per_second < math.inf:
            raise ConfigurationError("a token bucket needs capacity > 0 and refill rate > 0")
        if math.isnan(self.amount):
            raise ConfigurationError(f"bucket {self.key!r}: the amount is NaN")


@final
@dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket row: ``tokens`` (negative while in debt) as of ``updated_at``."""

    tokens: float
    updated_at: float


@final
@dataclass(frozen=True, slots=True)
class Reservation:
    """The outcome of :meth:`LimitStore.rate_reserve`.

    Attributes:
        wait: seconds until the reservation's debt is paid off — when the caller may
            proceed (0.0: at once); ``inf`` if an amount exceeds its bucket's capacity.
        granted: whether the amounts were taken. They are unless ``wait`` is ``inf`` or
            exceeds the ``max_wait`` asked for; then nothing was taken.
        available: each bucket's tokens after the operation, in the order of the draws.
    """

    wait: float
    granted: bool
    available: tuple[float, ...]


def _refill(state: BucketState | None, draw: BucketDraw, now: float) -> BucketState:
    if state is None:
        return BucketState(draw.capacity, now)
    if now > state.updated_at:
        return BucketState(min(draw.capacity,
                               state.tokens + (now - state.updated_at) * draw.refill_per_second),
                           now)
    return BucketState(min(draw.capacity, state.tokens), state.updated_at)


def plan_reservation(
    states: Sequence[BucketState | None], draws: Sequence[BucketDraw], *, now: float,
    max_wait: float | None,
) -> tuple[Reservation, list[BucketState]]:
    """Reserve ``draws`` from buckets in ``states`` (``None``: not created yet) at ``now``.

    Returns the reservation and the buckets' new states (refilled, and debited when
    granted), to be written back in the same transaction.
    """
    if len(states) != len(draws):
        raise ValueError("one state per draw")
    refilled = [_refill(s, d, now) for s, d in zip(states, draws, strict=True)]
    wait = 0.0
    for state, draw in zip(refilled, draws, strict=True):
        if draw.amount > draw.capacity:
            wait = math.inf
        elif state.tokens < draw.amount:
            wait = max(wait, (draw.amount - state.tokens) / draw.refill_per_second)
    granted = wait != math.inf and (max_wait is None or wait <= max_wait)
    if granted:
        refilled = [BucketState(s.tokens - d.amount, s.updated_at)
                    for s, d in zip(refilled, draws, strict=True)]
    return Reservation(wait, granted, tuple(s.tokens for s in refilled)), refilled


def plan_adjustment(state: BucketState | None, draw: BucketDraw, *, now: float) -> BucketState:
    """The bucket after adding ``draw.amount`` tokens at ``now`` (a refund, capped at the
    capacity) or, when negative, charging them (possibly into debt)."""
    refilled = _refill(state, draw, now)
    return BucketState(min(draw.capacity, refilled.tokens + draw.amount), refilled.updated_at)


@runtime_checkable
class LimitStore(Protocol):
    """A store that keeps cluster-wide rate limits and bulkhead slots (see the module
    docstring). :class:`~stalwart.store.SQLiteStore`, ``PostgresStore`` and
    :class:`~stalwart.testing.MemoryStore` implement it."""

    @property
    def cluster_limits_default(self) -> bool:
        """Whether a runtime on this store shares its limits with other workers unless
        told otherwise: true for a store built to be shared by many worker processes
        (PostgreSQL), false for the embedded ones."""
        ...

    async def rate_reserve(
        self, draws: Sequence[BucketDraw], *, now: float, max_wait: float | None = None
    ) -> Reservation:
        """Refill the draws' buckets to ``now`` and, unless the wait would exceed
        ``max_wait`` (``None``: any finite wait) or be infinite, take every amount —
        going into debt if need be — all in one transaction."""
        ...

    async def rate_adjust(self, draws: Sequence[BucketDraw], *, now: float) -> tuple[float, ...]:
        """Add each draw's amount to its bucket (a negative amount charges it), in one
        transaction; return the buckets' tokens after."""
        ...

    async def bulkhead_acquire(
        self, pool: str, holder: str, *, max_concurrent: int, now: float, lease_seconds: float
    ) -> bool:
        """Take a slot of ``pool`` for ``holder`` until ``now + lease_seconds`` if fewer than
        ``max_concurrent`` unexpired slots are held (expired ones are deleted first), in
        one transaction serialized per pool. A holder that has a slot already keeps it
        (with the new expiry) and gets True."""
        ...

    async def bulkhead_renew(
        self, holders: Sequence[str], *, now: float, lease_seconds: float
    ) -> set[str]:
        """Extend the slots of ``holders`` (in any pool) to ``now + lease_seconds``; return
        the holders whose slot was still there."""
        ...

    async def bulkhead_release(self, pool: str, holder: str) -> None:
        """Give ``holder``'s slot of ``pool`` back (nothing happens if it has none)."""
        ...

    async def bulkhead_active(self, pool: str, *, now: float) -> int:
        """How many unexpired slots of ``pool`` are held now, by any worker."""
        ...

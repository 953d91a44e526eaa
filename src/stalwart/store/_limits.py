"""Cluster-wide limits kept in the store: token buckets and bulkhead slots.

Workers that share a store share their rate limits and bulkhead pools through it, so ten
workers do not get ten times a provider's quota. A store that can do this implements
:class:`~stalwart.policies.LimitStore` (a protocol the policies define: the store
implements it without importing them) next to :class:`~stalwart.store.Store`:

* **Token buckets** — one row per bucket key: ``tokens`` at ``updated_at``, refilled
  continuously at ``refill_per_second`` up to ``capacity``.
  :meth:`~stalwart.policies.LimitStore.rate_reserve` refills, computes the wait and,
  when it is allowed, debits every bucket of the call (a request bucket and a token
  bucket, say) in one transaction — the same *reserve, then
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, final, runtime_checkable

from .._buckets import BucketDraw, Reservation

__all__ = [
    "BucketDraw",
    "BucketState",
    "BucketView",
    "LimitsReader",
    "LimitsView",
    "PoolView",
    "limits_view",
    "Reservation",
    "plan_adjustment",
    "plan_reservation",
]


@final
@dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket row: ``tokens`` (negative while in debt) as of ``updated_at``."""

    tokens: float
    updated_at: float


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


@final
@dataclass(frozen=True, slots=True)
class BucketView:
    """A token bucket as it stands at the moment it was read: ``tokens`` refilled up to
    then by the rule every reservation applies (negative while callers are in debt)."""

    key: str
    tokens: float
    capacity: float
    refill_per_second: float
    updated_at: float


@final
@dataclass(frozen=True, slots=True)
class PoolView:
    """A bulkhead pool's unexpired slots: how many are held, by whom, since when."""

    pool: str
    in_use: int
    holders: tuple[str, ...]
    oldest: float | None
    """When the longest-held slot was acquired."""


@final
@dataclass(frozen=True, slots=True)
class LimitsView:
    """The cluster-wide limits kept in a store, read at one moment (``stalwart
    dashboard``). What waits in each worker's queue is that worker's memory, not here."""

    now: float
    buckets: tuple[BucketView, ...]
    pools: tuple[PoolView, ...]


@runtime_checkable
class LimitsReader(Protocol):
    """A store that can show the cluster-wide limits it keeps (SQLite, PostgreSQL)."""

    async def limits_view(self, *, now: float) -> LimitsView: ...


BucketRow = tuple[str, float, float, float, float]
"""key, tokens, updated_at, capacity, refill_per_second."""
SlotRow = tuple[str, str, float, float]
"""pool, holder, acquired_at, expires_at."""


def limits_view(buckets: Iterable[BucketRow], slots: Iterable[SlotRow], *,
                now: float) -> LimitsView:
    """The view of a store's bucket and slot rows at ``now``: buckets refilled as a
    reservation would refill them, slots counted while unexpired (as
    ``bulkhead_active`` counts them)."""
    views = []
    for key, tokens, updated_at, capacity, refill in buckets:
        draw = BucketDraw(key, 0.0, capacity, refill)
        state = _refill(BucketState(tokens, updated_at), draw, now)
        views.append(BucketView(key, state.tokens, capacity, refill, updated_at))
    held: dict[str, list[tuple[str, float]]] = {}
    for pool, holder, acquired_at, expires_at in slots:
        if expires_at >= now:
            held.setdefault(pool, []).append((holder, acquired_at))
    pools = tuple(PoolView(pool, len(rows), tuple(h for h, _ in rows),
                           min((t for _, t in rows), default=None))
                  for pool, rows in sorted(held.items()))
    return LimitsView(now=now, buckets=tuple(sorted(views, key=lambda b: b.key)), pools=pools)

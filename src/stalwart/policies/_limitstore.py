"""The protocol a store implements to keep cluster-wide limits: the policies define it,
the stores implement it.

:class:`LimitStore` is all :mod:`stalwart.policies` needs from a store to share rate
limits and bulkhead slots between workers (``ClusterRateLimiter``, ``ClusterBulkhead``).
Stores implement it structurally — they import nothing from the policies — and speak
the shared words of :mod:`stalwart._buckets` (:class:`BucketDraw`, :class:`Reservation`).
How a store plans a reservation is its own business (``store/_limits.py`` holds the pure
planner every built-in store uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from stalwart._buckets import BucketDraw, Reservation

__all__ = ["BucketDraw", "LimitStore", "Reservation"]


@runtime_checkable
class LimitStore(Protocol):
    """A store that keeps cluster-wide rate limits and bulkhead slots (see the module
    docstring of :mod:`stalwart.store._limits`). :class:`~stalwart.store.SQLiteStore`,
    ``PostgresStore`` and :class:`~stalwart.testing.MemoryStore` implement it."""

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

"""The words a cluster-wide limit and its store share: a draw on a token bucket and the
answer to a reservation.

Both sides speak them: :mod:`stalwart.policies` (whose ``LimitStore`` protocol asks a
store to reserve draws) and :mod:`stalwart.store` (whose stores implement that protocol
and plan the arithmetic in ``store/_limits.py``). They live below both so that neither
imports the other: policies depend on the protocol they define, stores implement it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import final

from .errors import ConfigurationError

__all__ = ["BucketDraw", "Reservation"]


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


"""Resilience policies: retry, timeouts, circuit breakers, bulkheads and rate limits.

Each policy is a frozen config plus, where it keeps state, a small stateful object with
``statistics()``; all take an injected :class:`~stalwart.Clock` (and Retry a
``random.Random``), so tests run in virtual time. The engine stacks them around every
model and tool call, outermost first::

    Budget → Fallback → Retry → CircuitBreaker → RateLimit → Bulkhead → Timeout → call

Bulkheads and rate limits come in two kinds with one interface: in-process ones, and
``Cluster*`` ones whose state is kept in the store and shared by every worker, through
the :class:`LimitStore` protocol defined here and implemented by the stores.

What a failure says about the dependency — its own failure, back-pressure (429), a
refused request, or one of our own limits — is decided in one place, :func:`classify`;
the breaker's defaults, Retry's default predicate and the rate limit layer all ask it.
A 429 holds every call to its dependency at a :class:`Backpressure` gate.

The policies know nothing of the engine or the stores; they raise the
:class:`~stalwart.errors.ResilienceError` subclasses and honour ``retryable`` and
``retry_after`` on whatever they catch.
"""

from __future__ import annotations

from ._backpressure import Backpressure as Backpressure
from ._backpressure import BackpressureRegistry as BackpressureRegistry
from ._backpressure import BackpressureStatistics as BackpressureStatistics
from ._breaker import BreakerPermit as BreakerPermit
from ._breaker import BreakerRegistry as BreakerRegistry
from ._breaker import BreakerState as BreakerState
from ._breaker import BreakerStatistics as BreakerStatistics
from ._breaker import BreakerTransition as BreakerTransition
from ._breaker import CircuitBreaker as CircuitBreaker
from ._breaker import CircuitBreakerConfig as CircuitBreakerConfig
from ._bulkhead import Bulkhead as Bulkhead
from ._bulkhead import BulkheadConfig as BulkheadConfig
from ._bulkhead import BulkheadRegistry as BulkheadRegistry
from ._bulkhead import BulkheadStatistics as BulkheadStatistics
from ._classify import Fault as Fault
from ._classify import classify as classify
from ._distributed import ClusterBulkhead as ClusterBulkhead
from ._distributed import ClusterBulkheadRegistry as ClusterBulkheadRegistry
from ._distributed import ClusterRateLimiter as ClusterRateLimiter
from ._distributed import ClusterRateLimiterRegistry as ClusterRateLimiterRegistry
from ._limitstore import LimitStore as LimitStore
from ._ratelimit import RateLimit as RateLimit
from ._ratelimit import RateLimiter as RateLimiter
from ._ratelimit import RateLimiterRegistry as RateLimiterRegistry
from ._ratelimit import RateLimitStatistics as RateLimitStatistics
from ._ratelimit import TokenBucket as TokenBucket
from ._retry import Attempt as Attempt
from ._retry import Decision as Decision
from ._retry import GiveUp as GiveUp
from ._retry import Retry as Retry
from ._retry import RetryEvent as RetryEvent
from ._retry import RetryOn as RetryOn
from ._retry import RetryState as RetryState
from ._retry import Sleep as Sleep
from ._retry import call_with_retry as call_with_retry
from ._retry import decide as decide
from ._timeout import DeadlineScope as DeadlineScope
from ._timeout import Timeout as Timeout
from ._timeout import current_deadline as current_deadline
from ._timeout import deadline_scope as deadline_scope
from ._timeout import remaining as remaining
from ._timeout import with_timeout as with_timeout

__all__ = [
    # what a failure says about the dependency
    "Fault",
    "classify",
    # retry
    "Retry",
    "RetryOn",
    "RetryState",
    "RetryEvent",
    "Attempt",
    "Sleep",
    "GiveUp",
    "Decision",
    "decide",
    "call_with_retry",
    # timeouts and deadlines
    "Timeout",
    "DeadlineScope",
    "deadline_scope",
    "current_deadline",
    "remaining",
    "with_timeout",
    # circuit breakers
    "CircuitBreakerConfig",
    "CircuitBreaker",
    "BreakerState",
    "BreakerPermit",
    "BreakerTransition",
    "BreakerStatistics",
    "BreakerRegistry",
    # bulkheads
    "BulkheadConfig",
    "Bulkhead",
    "BulkheadStatistics",
    "BulkheadRegistry",
    # rate limits
    "RateLimit",
    "TokenBucket",
    "RateLimiter",
    "RateLimitStatistics",
    "RateLimiterRegistry",
    "Backpressure",
    "BackpressureStatistics",
    "BackpressureRegistry",
    # cluster-wide bulkheads and rate limits (kept in the store)
    "ClusterBulkhead",
    "ClusterBulkheadRegistry",
    "ClusterRateLimiter",
    "ClusterRateLimiterRegistry",
    "LimitStore",
]

"""The public surface of stalwart.policies and its errors, pinned."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import pickle

import pytest

import stalwart.policies as policies
from stalwart import errors

EXPECTED = {
    "Retry", "RetryOn", "RetryState", "RetryEvent", "Attempt", "Sleep", "GiveUp", "Decision",
    "decide", "call_with_retry",
    "Timeout", "DeadlineScope", "deadline_scope", "current_deadline", "remaining",
    "with_timeout",
    "CircuitBreakerConfig", "CircuitBreaker", "BreakerState", "BreakerPermit",
    "BreakerTransition", "BreakerStatistics", "BreakerRegistry",
    "BulkheadConfig", "Bulkhead", "BulkheadStatistics", "BulkheadRegistry",
    "RateLimit", "TokenBucket", "RateLimiter", "RateLimitStatistics", "RateLimiterRegistry",
    "ClusterBulkhead", "ClusterBulkheadRegistry", "ClusterRateLimiter",
    "ClusterRateLimiterRegistry", "LimitStore",
    "Backpressure", "BackpressureStatistics", "BackpressureRegistry", "Fault", "classify",
}


def test_all_is_pinned() -> None:
    """__all__ lists exactly the intended names, each importable."""
    assert set(policies.__all__) == EXPECTED
    assert len(policies.__all__) == len(EXPECTED)
    for name in set(policies.__all__) - {"Decision"}:  # Decision is a union alias
        assert getattr(policies, name).__module__.startswith("stalwart.policies.")


def test_concrete_public_classes_are_final() -> None:
    """Every exported concrete class is @typing.final (closed by default)."""
    for name in policies.__all__:
        obj = getattr(policies, name)
        if (inspect.isclass(obj) and not issubclass(obj, enum.Enum)
                and not getattr(obj, "_is_protocol", False)):
            assert getattr(obj, "__final__", False), name


def test_configs_are_frozen_keyword_only_slotted_dataclasses() -> None:
    """Policy configs are immutable, keyword-only and slotted."""
    configs = [policies.Retry, policies.Timeout, policies.CircuitBreakerConfig,
               policies.BulkheadConfig, policies.RateLimit]
    for config in configs:
        params = dataclasses.fields(config)
        assert all(f.kw_only for f in params), config
        assert config.__dataclass_params__.frozen, config  # type: ignore[attr-defined]
        assert "__slots__" in vars(config), config


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (errors.RetryExhaustedError("x", attempts=3), False),
        (errors.CallTimeoutError("x", timeout=1.0), True),
        # Retryable after its retry_after: Retry waits for the half-open trial call.
        (errors.CircuitOpenError("x", key="k", state="open", retry_after=2.0), True),
        (errors.BulkheadFullError("x", name="n", reason="queue_full"), True),
        (errors.ThrottledError("x", key="k", retry_after=1.5), True),
    ],
)
def test_policy_errors_are_resilience_errors_that_pickle(
    error: errors.ResilienceError, retryable: bool
) -> None:
    """Each policy error derives from ResilienceError, says if it is retryable and
    survives the journal's pickle round trip with its context."""
    assert isinstance(error, errors.ResilienceError)
    assert error.retryable is retryable
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.__dict__ == error.__dict__

"""The one failure classifier: what each error says about the dependency, whether it is
worth a retry, and how a breaker counts it."""

from __future__ import annotations

import asyncio

import pytest

from stalwart import errors as e
from stalwart.policies import CircuitBreakerConfig, Fault, Retry, RetryOn, classify
from stalwart.policies._classify import counts_as_failure, is_retryable, says_nothing


class _Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class HTTPStatusError(Exception):
    """What httpx raises: the status sits on its ``response``."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.response = _Response(status)


class StatusError(Exception):
    """An SDK error carrying the status on itself."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status


P = {"provider": "p", "model": "m"}

TABLE: list[tuple[BaseException, Fault, bool]] = [
    (asyncio.CancelledError(), Fault.CONTROL, False),
    (KeyboardInterrupt(), Fault.CONTROL, False),
    (e.RateLimitedError("429", retry_after=8.0, **P), Fault.BACKPRESSURE, True),
    (e.InvalidRequestError("400", **P), Fault.REQUEST, False),
    (e.AuthenticationError("401", **P), Fault.REQUEST, False),
    (e.ContentFilterError("filtered", **P), Fault.REQUEST, False),
    (e.ProviderOverloadedError("503", **P), Fault.DEPENDENCY, True),
    (e.ModelTimeoutError("no answer", **P), Fault.DEPENDENCY, True),
    (e.ModelConnectionError("reset", **P), Fault.DEPENDENCY, True),
    (e.MalformedResponseError("not json", **P), Fault.DEPENDENCY, True),
    (e.OutcomeCheckError("wrong", key="k"), Fault.DEPENDENCY, True),
    (e.CallTimeoutError("slow", timeout=1.0), Fault.DEPENDENCY, True),
    (e.RetryExhaustedError("gave up", attempts=3), Fault.DEPENDENCY, False),
    (e.FallbackExhaustedError("all down", keys=("a", "b")), Fault.DEPENDENCY, False),
    (e.CircuitOpenError("open", key="k", state="open", retry_after=3.0), Fault.LOCAL, True),
    (e.BulkheadFullError("full", name="n", reason="queue_full"), Fault.LOCAL, True),
    (e.ThrottledError("throttled", key="k", retry_after=1.0), Fault.LOCAL, True),
    (e.BudgetExceededError("budget", budget="max_cost", level="runtime", limit=1.0,
                           used=1.0), Fault.LOCAL, False),
    (e.LeaseLostError("fenced out"), Fault.LOCAL, False),
    (e.ConfigurationError("bad"), Fault.LOCAL, False),
    (HTTPStatusError(429), Fault.BACKPRESSURE, True),
    (StatusError(503), Fault.DEPENDENCY, True),
    (HTTPStatusError(408), Fault.DEPENDENCY, True),
    (StatusError(404), Fault.REQUEST, False),
    (HTTPStatusError(302), Fault.DEPENDENCY, False),
    (ConnectionResetError("reset"), Fault.DEPENDENCY, True),
    (TimeoutError(), Fault.DEPENDENCY, True),
    (OSError("EHOSTUNREACH"), Fault.DEPENDENCY, True),
    (ValueError("a bug in the tool"), Fault.DEPENDENCY, False),
]


@pytest.mark.parametrize(("error", "fault", "retryable"), TABLE,
                         ids=[f"{type(t[0]).__name__}-{t[1]}" for t in TABLE])
def test_each_error_is_classified_once_for_every_layer(
        error: BaseException, fault: Fault, retryable: bool) -> None:
    """The table of the classifier's docstring, row by row: the fault, Retry's default
    predicate, and the breaker's defaults (record a dependency failure, ignore
    back-pressure, our own limits and control flow, count a refused request as answered)."""
    assert classify(error) is fault
    assert is_retryable(error) is retryable
    assert RetryOn.transient()(error) is Retry().retry_on(error) is retryable
    config = CircuitBreakerConfig()
    assert config.record(error) is counts_as_failure(error) is (fault is Fault.DEPENDENCY)
    assert config.ignore(error) is says_nothing(error) is (
        fault in (Fault.BACKPRESSURE, Fault.LOCAL, Fault.CONTROL))


def test_a_status_on_a_bool_or_out_of_range_is_no_status() -> None:
    """Only a real HTTP status counts: True and 999 are not statuses."""
    assert classify(StatusError(True)) is Fault.DEPENDENCY  # type: ignore[arg-type]
    assert not is_retryable(StatusError(True))  # type: ignore[arg-type]
    assert classify(StatusError(999)) is Fault.DEPENDENCY
    assert not is_retryable(StatusError(999))

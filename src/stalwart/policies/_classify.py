"""Whose fault was it? The one failure classifier every policy layer asks.

A failed call says something about the dependency only when the dependency failed. A 429
says the dependency is healthy and busy; a 400 says our request was wrong; a full
bulkhead says *we* held the call back. Counting those against a dependency's circuit
breaker opens it for the wrong reasons (ten runs each answered one 429 once opened a
breaker and dead-lettered all ten). :func:`classify` makes the decision once, and each
layer reads it:

* the circuit breaker records :attr:`Fault.DEPENDENCY` as a failure, ignores
  :attr:`Fault.BACKPRESSURE`, :attr:`Fault.LOCAL` and :attr:`Fault.CONTROL` (no verdict
  on the dependency: its permit is given back) and counts :attr:`Fault.REQUEST` as a
  call the dependency answered (resilience4j's ``recordExceptions`` /
  ``ignoreExceptions``, where an exception neither recorded nor ignored is a success);
* the rate limit layer turns :attr:`Fault.BACKPRESSURE` into a hold on every call to the
  dependency (Envoy keeps 429s out of outlier detection and backs off on them instead);
* Retry's default predicate, :func:`is_retryable`.

The table, first match wins:

=====================================================  ==============  ===========
error                                                  fault           retryable
=====================================================  ==============  ===========
not an ``Exception`` (cancellation, control flow)      CONTROL         no
``RateLimitedError`` (a 429)                           BACKPRESSURE    yes
``InvalidRequestError``, ``AuthenticationError``,      REQUEST         no
``ContentFilterError`` (400/401/403/404/422, filter)
any other ``ModelError`` (5xx, timeouts, connection,   DEPENDENCY      its own say
malformed bodies)
``OutcomeCheckError`` ("HTTP 200 but wrong")           DEPENDENCY      yes
``CallTimeoutError`` (an attempt outlived its limit)   DEPENDENCY      yes
``RetryExhaustedError``, ``FallbackExhaustedError``    DEPENDENCY      no
(what the dependency depends on gave up)
any other ``ResilienceError`` (circuit open, bulkhead  LOCAL           its own say
full, throttled, budget)
any other ``StalwartError`` (store, lease, config)     LOCAL           its own say
an exception with an HTTP ``status_code`` (on itself   429: BACKPRESSURE; 408 and
or its ``response``, as httpx and requests raise)      5xx: DEPENDENCY; other 4xx:
                                                       REQUEST
any other exception                                    DEPENDENCY      if it is an
                                                                       ``OSError`` or
                                                                       ``TimeoutError``
=====================================================  ==============  ===========
"""

from __future__ import annotations

import enum

from stalwart.errors import (
    AuthenticationError,
    CallTimeoutError,
    ContentFilterError,
    FallbackExhaustedError,
    InvalidRequestError,
    ModelError,
    OutcomeCheckError,
    RateLimitedError,
    RetryExhaustedError,
    StalwartError,
)

__all__ = ["Fault", "classify", "counts_as_failure", "is_retryable", "says_nothing"]


class Fault(enum.StrEnum):
    """What a failed call says about the dependency it was made to."""

    DEPENDENCY = "dependency"
    """The dependency failed: 5xx, timeouts, dropped connections, malformed responses,
    outputs that failed their check. Counts against its circuit breaker."""
    BACKPRESSURE = "backpressure"
    """The dependency is up and asks us to slow down (429). Holds the calls to it; never
    counts against its breaker."""
    REQUEST = "request"
    """The dependency answered and refused the request on its merits (400, 401, 403,
    404, 422, a content filter). The dependency did its job; retrying cannot help."""
    LOCAL = "local"
    """Our own limit or machinery stopped the call (bulkhead full, throttled, budget,
    circuit open, the journal): it says nothing about the dependency."""
    CONTROL = "control"
    """Cancellation or another ``BaseException``: no outcome at all."""


_REQUEST_ERRORS = (InvalidRequestError, AuthenticationError, ContentFilterError)
_DEPENDENCY_ERRORS = (ModelError, OutcomeCheckError, CallTimeoutError, RetryExhaustedError,
                      FallbackExhaustedError)


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, on itself or on its ``response``."""
    for holder in (exc, getattr(exc, "response", None)):
        status = getattr(holder, "status_code", None)
        if isinstance(status, int) and not isinstance(status, bool) and 100 <= status < 600:
            return status
    return None


def _by_status(status: int) -> Fault | None:
    if status == 429:
        return Fault.BACKPRESSURE
    if status == 408 or status >= 500:
        return Fault.DEPENDENCY
    if status >= 400:
        return Fault.REQUEST
    return None


def classify(exc: BaseException) -> Fault:
    """What ``exc``, raised by a call, says about the dependency; see the module table."""
    if not isinstance(exc, Exception):
        return Fault.CONTROL
    if isinstance(exc, RateLimitedError):
        return Fault.BACKPRESSURE
    if isinstance(exc, _REQUEST_ERRORS):
        return Fault.REQUEST
    if isinstance(exc, _DEPENDENCY_ERRORS):
        return Fault.DEPENDENCY
    if isinstance(exc, StalwartError):  # our limits (ResilienceError), store, config
        return Fault.LOCAL
    status = _http_status(exc)
    by_status = None if status is None else _by_status(status)
    return Fault.DEPENDENCY if by_status is None else by_status


def counts_as_failure(exc: BaseException) -> bool:
    """Whether a circuit breaker records ``exc`` as a failure of the dependency (the
    default ``CircuitBreakerConfig.record``)."""
    return classify(exc) is Fault.DEPENDENCY


def says_nothing(exc: BaseException) -> bool:
    """Whether a circuit breaker ignores ``exc`` altogether, giving its permit back: a
    429, our own limits, cancellation (the default ``CircuitBreakerConfig.ignore``)."""
    return classify(exc) in (Fault.BACKPRESSURE, Fault.LOCAL, Fault.CONTROL)


def is_retryable(exc: BaseException) -> bool:
    """Whether a retry of the call could succeed: a stalwart error's own ``retryable``;
    for any other exception, a 429 or a dependency failure that is an ``OSError`` or
    ``TimeoutError`` or carries a 408/5xx status (``RetryOn.transient()``)."""
    if isinstance(exc, StalwartError):
        return exc.retryable
    kind = classify(exc)
    if kind is Fault.BACKPRESSURE:
        return True
    if kind is not Fault.DEPENDENCY:
        return False
    # TimeoutError and ConnectionError are OSError subclasses; named for the reader.
    if isinstance(exc, TimeoutError | ConnectionError | OSError):
        return True
    status = _http_status(exc)
    return status is not None and _by_status(status) is Fault.DEPENDENCY

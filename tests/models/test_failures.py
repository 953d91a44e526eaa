"""Retry-After parsing and the status-code table shared by the adapters."""

from __future__ import annotations

import email.utils

import pytest

from stalwart.errors import (
    AuthenticationError,
    ContentFilterError,
    InvalidRequestError,
    ModelError,
    ModelTimeoutError,
    ProviderOverloadedError,
    ProviderQuota,
    RateLimitedError,
)
from stalwart.models import parse_retry_after
from stalwart.models._failures import error_for_status, parse_quota

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, None),
    ({"Retry-After": "3"}, 3.0),
    ({"retry-after": " 1.5 "}, 1.5),
    ({"Retry-After": "-4"}, 0.0),
    ({"Retry-After": "99999999"}, 3600.0),
    ({"Retry-After": "soon"}, None),
    ({"Retry-After": "nan"}, None),
    ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
    ({"retry-after-ms": "junk", "Retry-After": "9"}, 9.0),
    ({"Retry-After": email.utils.formatdate(NOW + 42, usegmt=True)}, 42.0),
    ({"Retry-After": email.utils.formatdate(NOW - 42, usegmt=True)}, 0.0),
])
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """Seconds, milliseconds and HTTP-dates become bounded seconds; junk is ignored."""
    assert parse_retry_after(headers, NOW) == expected


@pytest.mark.parametrize(("status", "code", "error"), [
    (429, None, RateLimitedError), (408, None, ModelTimeoutError),
    (500, None, ProviderOverloadedError), (529, None, ProviderOverloadedError),
    (401, None, AuthenticationError), (403, None, AuthenticationError),
    (400, None, InvalidRequestError), (409, None, InvalidRequestError),
    (413, None, InvalidRequestError), (400, "content_policy_violation", ContentFilterError),
])
def test_status_table(status: int, code: str | None, error: type[ModelError]) -> None:
    """Each status maps to one class; retry_after is kept only on retryable ones."""
    err = error_for_status(status, "msg", provider="p", model="m", retry_after=5.0, code=code)
    assert type(err) is error
    assert err.retry_after == (5.0 if error.retryable else None)
    assert "p:m answered HTTP" in str(err)


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, None),
    ({"Retry-After": "3"}, None),
    # OpenAI: Go durations for the resets
    ({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
      "x-ratelimit-reset-requests": "1m30.5s", "x-ratelimit-limit-tokens": "150000",
      "x-ratelimit-remaining-tokens": "149000", "x-ratelimit-reset-tokens": "400ms"},
     ProviderQuota(requests_limit=60, requests_remaining=0, requests_reset=90.5,
                   tokens_limit=150_000, tokens_remaining=149_000, tokens_reset=0.4)),
    ({"X-RateLimit-Reset-Requests": "2"}, ProviderQuota(requests_reset=2.0)),
    ({"x-ratelimit-reset-requests": "1h2m"}, ProviderQuota(requests_reset=3600.0)),
    ({"x-ratelimit-reset-tokens": "soon", "x-ratelimit-limit-tokens": "-5"}, None),
    ({"x-ratelimit-limit-requests": "0"}, None),
    # Anthropic: RFC 3339 times, and input-tokens when there is no tokens quota
    ({"anthropic-ratelimit-requests-limit": "50",
      "anthropic-ratelimit-requests-remaining": "0",
      "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:40Z",
      "anthropic-ratelimit-input-tokens-limit": "40000",
      "anthropic-ratelimit-input-tokens-remaining": "0",
      "anthropic-ratelimit-input-tokens-reset": "2023-11-14T22:14:20+00:00"},
     ProviderQuota(requests_limit=50, requests_remaining=0, requests_reset=20.0,
                   tokens_limit=40_000, tokens_remaining=0, tokens_reset=60.0)),
    ({"anthropic-ratelimit-requests-reset": "2023-11-14T22:13:40"}, None),  # no zone
])
def test_parse_quota(headers: dict[str, str], expected: ProviderQuota | None) -> None:
    """OpenAI's and Anthropic's rate-limit headers become one ProviderQuota; junk is
    ignored, a reset is seconds from now."""
    assert parse_quota(headers, NOW) == expected


def test_a_429_without_retry_after_waits_for_its_exhausted_quota() -> None:
    """No Retry-After: the reset of the quota that is used up is the wait (the longest
    of them); a quota with room left sets none; a Retry-After wins over it."""
    quota = ProviderQuota(requests_remaining=0, requests_reset=20.0, tokens_remaining=0,
                          tokens_reset=45.0)
    err = error_for_status(429, "slow down", provider="p", model="m", quota=quota)
    assert isinstance(err, RateLimitedError)
    assert (err.retry_after, err.quota) == (45.0, quota)
    roomy = ProviderQuota(requests_remaining=3, requests_reset=20.0)
    assert error_for_status(429, "x", provider="p", model="m", quota=roomy).retry_after is None
    assert error_for_status(429, "x", provider="p", model="m", retry_after=2.0,
                            quota=quota).retry_after == 2.0

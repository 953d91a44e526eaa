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
    RateLimitedError,
)
from stalwart.models import parse_retry_after
from stalwart.models._failures import error_for_status

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

"""Turning an HTTP failure into one stalwart error, the same way for every adapter.

Both SDK adapters end up with an HTTP status, the response headers and a message; the
decision "which error class, retryable or not, how long to wait" is made here once, so
the adapters cannot drift apart and the policy stack can rely on ``retryable`` and
``retry_after`` alone.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping

from stalwart.errors import (
    AuthenticationError,
    ContentFilterError,
    InvalidRequestError,
    ModelError,
    ModelTimeoutError,
    ProviderOverloadedError,
    RateLimitedError,
    _ProviderError,
)

__all__ = ["error_for_status", "parse_retry_after"]

# Cap what a provider may ask for; a broken header must not park a run for a week.
MAX_RETRY_AFTER = 3600.0


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait according to the response headers, or ``None``.

    Reads ``retry-after-ms`` (OpenAI's precise variant) first, then ``Retry-After`` as
    delta-seconds or as an HTTP-date (RFC 9110 §10.2.3), which is turned into seconds
    from ``now`` (wall-clock epoch seconds). Negative results become 0; results are
    capped at an hour; unparseable values are ignored.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            pass
        else:
            if math.isfinite(ms):
                return _clamp(ms / 1000.0)
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC says GMT; tolerate a missing zone
            return None
        return _clamp(when.timestamp() - now)
    return _clamp(seconds) if math.isfinite(seconds) else None


def _clamp(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


_CONTENT_FILTER_CODES = frozenset({"content_filter", "content_policy_violation"})


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str,
    model: str,
    retry_after: float | None = None,
    code: str | None = None,
) -> ModelError:
    """The stalwart error for an HTTP error response.

    ``code`` is the provider's machine-readable error code, when the body had one; a
    content-policy code turns a 400 into :class:`ContentFilterError`.
    """
    cls: type[_ProviderError]
    if status == 429:
        cls = RateLimitedError
    elif status == 408:
        cls = ModelTimeoutError
    elif status >= 500:  # includes Anthropic's 529 "overloaded"
        cls = ProviderOverloadedError
    elif status in (401, 403):
        cls = AuthenticationError
    elif code in _CONTENT_FILTER_CODES:
        cls = ContentFilterError
    else:  # 400, 404, 409, 413, 422 and any other 4xx: the request itself is wrong
        cls = InvalidRequestError
    return cls(f"{provider}:{model} answered HTTP {status}: {message}", provider=provider,
               model=model, status_code=status,
               retry_after=retry_after if cls.retryable else None)

"""Turning an HTTP failure into one stalwart error, the same way for every adapter.

Both SDK adapters end up with an HTTP status, the response headers and a message; the
decision "which error class, retryable or not, how long to wait" is made here once, so
the adapters cannot drift apart and the policy stack can rely on ``retryable`` and
``retry_after`` alone.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from datetime import datetime

from stalwart.errors import (
    AuthenticationError,
    ContentFilterError,
    InvalidRequestError,
    ModelError,
    ModelTimeoutError,
    ProviderOverloadedError,
    ProviderQuota,
    RateLimitedError,
    _ProviderError,
)

__all__ = ["error_for_status", "parse_quota", "parse_retry_after"]

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


# OpenAI's resets are Go durations ("1s", "6m0s", "20ms", "1h2m3.5s").
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6,
                 "ns": 1e-9}


def _go_duration(raw: str) -> float | None:
    text = raw.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        try:  # a bare number of seconds
            seconds = float(text)
        except ValueError:
            return None
        return seconds if math.isfinite(seconds) else None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _rfc3339_from(raw: str, now: float) -> float | None:
    try:
        when = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp() - now


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def parse_quota(headers: Mapping[str, str], now: float) -> ProviderQuota | None:
    """What the rate-limit headers of a response say, or ``None`` if it has none.

    Reads OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (resets as
    Go durations, ``"6m0s"``) and Anthropic's ``anthropic-ratelimit-{requests,tokens}-
    {limit,remaining,reset}`` (resets as RFC 3339 times, turned into seconds from
    ``now``; Anthropic's ``input-tokens`` quota stands in when ``tokens`` is absent).
    Unparseable values are ignored; resets are clamped to [0, an hour].
    """
    h = {k.lower(): v for k, v in headers.items()}
    fields: dict[str, float | None] = {}
    for kind in ("requests", "tokens"):
        limit = _number(h.get(f"x-ratelimit-limit-{kind}"))
        remaining = _number(h.get(f"x-ratelimit-remaining-{kind}"))
        raw_reset = h.get(f"x-ratelimit-reset-{kind}")
        reset = None if raw_reset is None else _go_duration(raw_reset)
        for prefix in ((f"anthropic-ratelimit-{kind}",) if kind == "requests" else
                       ("anthropic-ratelimit-tokens", "anthropic-ratelimit-input-tokens")):
            if limit is None and remaining is None and reset is None:
                limit = _number(h.get(f"{prefix}-limit"))
                remaining = _number(h.get(f"{prefix}-remaining"))
                raw_reset = h.get(f"{prefix}-reset")
                reset = None if raw_reset is None else _rfc3339_from(raw_reset, now)
        fields[f"{kind}_limit"] = limit or None  # a limit of 0 means nothing usable
        fields[f"{kind}_remaining"] = remaining
        fields[f"{kind}_reset"] = None if reset is None else _clamp(reset)
    if all(v is None for v in fields.values()):
        return None
    return ProviderQuota(**fields)


_CONTENT_FILTER_CODES = frozenset({"content_filter", "content_policy_violation"})


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str,
    model: str,
    retry_after: float | None = None,
    code: str | None = None,
    quota: ProviderQuota | None = None,
) -> ModelError:
    """The stalwart error for an HTTP error response.

    ``code`` is the provider's machine-readable error code, when the body had one; a
    content-policy code turns a 400 into :class:`ContentFilterError`. ``quota`` (what
    the rate-limit headers said) goes on a 429's :class:`RateLimitedError`; when it had
    no ``Retry-After``, the time until its exhausted quota resets stands in for one.
    """
    if status == 429:
        if retry_after is None and quota is not None:
            retry_after = quota.exhausted_for()
        return RateLimitedError(
            f"{provider}:{model} answered HTTP {status}: {message}", provider=provider,
            model=model, status_code=status, retry_after=retry_after, quota=quota)
    cls: type[_ProviderError]
    if status == 408:
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

"""A bundle of resilience policies, attached at runtime, agent and call level.

Each field of :class:`Policy` is either a config, ``None`` (that policy is off) or
:data:`INHERIT` (take the enclosing level's choice) — httpx's ``USE_CLIENT_DEFAULT``
idea. ``call_policy.over(agent_policy).over(runtime_policy)`` resolves the nearest
explicit choice for each field.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Final, final

from ..errors import ConfigurationError
from ..models import Model
from ..policies import BulkheadConfig, CircuitBreakerConfig, RateLimit, Retry, Timeout

__all__ = ["DEFAULT_POLICY", "INHERIT", "Policy"]


class _Inherit(enum.Enum):
    INHERIT = "INHERIT"

    def __repr__(self) -> str:
        return "INHERIT"


INHERIT: Final = _Inherit.INHERIT
"""Marker: take this policy from the enclosing level."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """Which resilience policies guard a model or tool call.

    Args:
        retry: backoff and attempts (journaled: a crash mid-backoff keeps the count).
        timeout: a :class:`~stalwart.policies.Timeout` or seconds per attempt.
        breaker: the circuit breaker config for the call's dependency key
            (``provider:model`` or ``tool:name``).
        rate_limit: requests/tokens per minute for the dependency key.
        bulkhead: concurrency limit and wait queue for the pool (agent class).
        fallback: further models to try, in order, when a model's breaker is open or
            its retries are exhausted (models only).
    """

    retry: Retry | _Inherit | None = INHERIT
    timeout: Timeout | float | _Inherit | None = INHERIT
    breaker: CircuitBreakerConfig | _Inherit | None = INHERIT
    rate_limit: RateLimit | _Inherit | None = INHERIT
    bulkhead: BulkheadConfig | _Inherit | None = INHERIT
    fallback: tuple[Any, ...] | _Inherit = INHERIT

    def __post_init__(self) -> None:
        if isinstance(self.timeout, int | float) and not isinstance(self.timeout, bool):
            if not 0 < self.timeout < float("inf"):
                raise ConfigurationError("Policy.timeout must be positive seconds")
            object.__setattr__(self, "timeout", Timeout(per_attempt=float(self.timeout)))
        if isinstance(self.fallback, str):  # one model, not its characters
            object.__setattr__(self, "fallback", (self.fallback,))
        elif isinstance(self.fallback, list):
            object.__setattr__(self, "fallback", tuple(self.fallback))
        # A field of the wrong type would be ignored or fail inside some later call
        # (a timeout of "0.5" was simply not applied): refused here, where it is made.
        for name, kind in _FIELD_TYPES.items():
            value = getattr(self, name)
            if value is not None and value is not INHERIT and not isinstance(value, kind):
                raise ConfigurationError(
                    f"Policy.{name} must be a {kind.__name__}, None or INHERIT, not "
                    f"{type(value).__name__} ({value!r})")
        if isinstance(self.fallback, tuple):
            for model in self.fallback:
                if not ((isinstance(model, str) and ":" in model) or isinstance(model, Model)):
                    raise ConfigurationError(
                        "Policy.fallback lists models ('provider:name' specs or Model "
                        f"instances), not {model!r}")

    def over(self, outer: Policy | None) -> Policy:
        """This policy, with every ``INHERIT`` field taken from ``outer``."""
        if outer is None:
            return self
        changes = {f.name: getattr(outer, f.name) for f in dataclasses.fields(self)
                   if getattr(self, f.name) is INHERIT}
        return dataclasses.replace(self, **changes)

    @property
    def retry_policy(self) -> Retry | None:
        return None if isinstance(self.retry, _Inherit) else self.retry

    @property
    def timeout_policy(self) -> Timeout | None:
        t = self.timeout
        return t if isinstance(t, Timeout) else None

    @property
    def breaker_config(self) -> CircuitBreakerConfig | None:
        return None if isinstance(self.breaker, _Inherit) else self.breaker

    @property
    def rate_limit_config(self) -> RateLimit | None:
        return None if isinstance(self.rate_limit, _Inherit) else self.rate_limit

    @property
    def bulkhead_config(self) -> BulkheadConfig | None:
        return None if isinstance(self.bulkhead, _Inherit) else self.bulkhead

    @property
    def fallback_chain(self) -> tuple[Any, ...]:
        return () if isinstance(self.fallback, _Inherit) else self.fallback


_FIELD_TYPES: Final[dict[str, type]] = {
    "retry": Retry, "timeout": Timeout, "breaker": CircuitBreakerConfig,
    "rate_limit": RateLimit, "bulkhead": BulkheadConfig, "fallback": tuple}


DEFAULT_POLICY: Final = Policy(
    retry=Retry(max_attempts=3, initial=1.0, max_backoff=30.0),
    timeout=Timeout(per_attempt=120.0),
    breaker=CircuitBreakerConfig(window_size=20, minimum_calls=10, wait_in_open=30.0,
                                 permitted_calls_in_half_open=2),
    rate_limit=None,
    bulkhead=None,
    fallback=(),
)
"""What a runtime uses where nothing else is said: 3 attempts with full-jitter backoff,
two minutes per attempt, a breaker per dependency; no rate limit, bulkhead or fallback."""

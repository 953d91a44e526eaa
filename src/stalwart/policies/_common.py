"""Helpers shared by the policy modules: durations, validation and keyed registries.

Public configs accept ``timedelta`` or float seconds and store float seconds, so the
decision code does plain arithmetic and two configs meaning the same thing compare equal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Generic, TypeVar

from stalwart.errors import ConfigurationError

__all__ = [
    "Duration",
    "KeyedRegistry",
    "check_positive",
    "check_non_negative",
    "to_seconds",
]

Duration = float | timedelta
"""A length of time: float seconds or a ``timedelta``."""

_P = TypeVar("_P")
_C = TypeVar("_C")


def to_seconds(value: Duration) -> float:
    """Float seconds of ``value`` (a ``timedelta`` or a number of seconds)."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def _checked(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise ConfigurationError(f"{owner}.{name} must be seconds or a timedelta, got {value!r}")
    seconds = to_seconds(value)
    if math.isnan(seconds):
        raise ConfigurationError(f"{owner}.{name} must be a number, got NaN")
    return seconds


def check_positive(owner: str, name: str, value: object) -> float:
    """``value`` in seconds, or ConfigurationError unless it is > 0."""
    seconds = _checked(owner, name, value)
    if seconds <= 0:
        raise ConfigurationError(f"{owner}.{name} must be > 0, got {value!r}")
    return seconds


def check_non_negative(owner: str, name: str, value: object) -> float:
    """``value`` in seconds, or ConfigurationError unless it is >= 0."""
    seconds = _checked(owner, name, value)
    if seconds < 0:
        raise ConfigurationError(f"{owner}.{name} must be >= 0, got {value!r}")
    return seconds


class KeyedRegistry(Generic[_C, _P]):
    """Policies created on first use of a key, from a per-key config or the default."""

    __slots__ = ("_default", "_factory", "_overrides", "_policies")

    def __init__(
        self,
        factory: Callable[[str, _C], _P],
        default: _C | None,
        overrides: Mapping[str, _C] | None,
    ) -> None:
        self._factory = factory
        self._default = default
        self._overrides = dict(overrides or {})
        self._policies: dict[str, _P] = {}

    def lookup(self, key: str, config: _C | None = None) -> _P | None:
        """The policy for ``key``, creating it on first use; ``None`` if it has no config."""
        policy = self._policies.get(key)
        if policy is None:
            chosen = config or self._overrides.get(key) or self._default
            if chosen is None:
                return None
            policy = self._policies[key] = self._factory(key, chosen)
        return policy

    def __contains__(self, key: object) -> bool:
        return key in self._policies

    def items(self) -> list[tuple[str, _P]]:
        """The policies created so far, by key, in creation order."""
        return list(self._policies.items())

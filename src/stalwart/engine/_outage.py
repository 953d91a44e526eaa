"""A store outage in three log lines, not a traceback per failed poll.

While the journal cannot be reached (a database restart, a cut network), every loop of a
runtime fails: the scheduler at each poll, the heartbeat at each renewal, the workers
registry at each report, a ``result()`` waiter at each look. Logging each failure with
its traceback buried the one fact an operator needs under hundreds of lines. A runtime
keeps one :class:`StoreHealth`; its loops report what they saw, and it logs only the
changes:

* the first failure: ``ERROR store URL is unreachable (claiming runs: ...); retrying``
* while it lasts, once per ``every`` seconds (a minute):
  ``WARNING store URL is still unreachable after 3m00s (last: ...)``
* the first success after it: ``WARNING store URL is reachable again after 3m12s``

Each is one line. Time comes from the runtime's clock, so tests check the lines in
virtual time. Only errors of the store (:class:`~stalwart.errors.StoreError`) count; any
other exception is a bug and is logged with its traceback where it happens.
"""

from __future__ import annotations

import logging
from typing import final

from .._clock import Clock

__all__ = ["StoreHealth"]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@final
class StoreHealth:
    """Whether the store answers, as this runtime's loops last saw it; logs changes."""

    def __init__(self, url: str, clock: Clock, logger: logging.Logger, *,
                 every: float = 60.0) -> None:
        self.url = url
        self.clock = clock
        self.log = logger
        self.every = every
        self.down_since: float | None = None
        """When the current outage began (monotonic), or ``None``: the store answers."""
        self._last_report = 0.0
        self._last_error = ""

    @property
    def reachable(self) -> bool:
        return self.down_since is None

    def failed(self, doing: str, exc: BaseException) -> None:
        """A store operation failed while ``doing`` (e.g. ``claiming runs``)."""
        now = self.clock.monotonic()
        self._last_error = f"{doing}: {_one_line(exc)}"
        if self.down_since is None:
            self.down_since = self._last_report = now
            self.log.error("store %s is unreachable (%s); retrying", self.url,
                           self._last_error)
        elif now - self._last_report >= self.every:
            self._last_report = now
            self.log.warning("store %s is still unreachable after %s (last: %s)", self.url,
                             _duration(now - self.down_since), self._last_error)

    def ok(self) -> None:
        """A store operation succeeded."""
        if self.down_since is None:
            return
        lasted = self.clock.monotonic() - self.down_since
        self.down_since = None
        self.log.warning("store %s is reachable again after %s", self.url, _duration(lasted))

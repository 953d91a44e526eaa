"""Trace and span ids derived from the journal's own names, so they survive a crash.

A run's trace id is a hash of its run id, and the id of each of stalwart's spans a hash
of what the span stands for (the run, a step id, an attempt): an execution that resumes
a run after a crash computes the same ids, so the spans it emits join the same trace
under the same parents, and a span that was cut short by the crash (and never exported)
is emitted once, by the execution that finishes it.

``_setup.RunIdGenerator`` hands these ids to the SDK.
"""

from __future__ import annotations

import hashlib
from typing import final

__all__ = ["RunIds", "span_id_for", "trace_id_for"]

_PERSON = b"stalwart-otel"


def _hasher(size: int, parts: tuple[str, ...]) -> hashlib.blake2b:
    h = hashlib.blake2b(digest_size=size, person=_PERSON)
    for part in parts:
        h.update(part.encode() + b"\x00")
    return h


def _value(h: hashlib.blake2b) -> int:
    return int.from_bytes(h.digest(), "big") or 1  # all zeros is the invalid id


def trace_id_for(run_id: str) -> int:
    """The 128-bit trace id of a run."""
    return _value(_hasher(16, ("trace", run_id)))


def span_id_for(run_id: str, *what: str) -> int:
    """The 64-bit id of the span for ``what`` in run ``run_id``."""
    return _value(_hasher(8, ("span", run_id, *what)))


@final
class RunIds:
    """:func:`span_id_for` for one run (``RunIds(r).span(*what) == span_id_for(r, *what)``).

    ``redrive=n`` (n > 0) gives the ids of what the run's n-th redrive (``dlq retry``)
    executes, distinct from those of earlier executions, which were emitted already:
    ``RunIds(r, redrive=n).span(*what) == span_id_for(r, "redrive", str(n), *what)``."""

    __slots__ = ("_prefix",)

    def __init__(self, run_id: str, *, redrive: int = 0) -> None:
        self._prefix = _hasher(8, ("span", run_id) if not redrive
                               else ("span", run_id, "redrive", str(redrive)))

    def span(self, *what: str) -> int:
        """The id of the span for ``what`` in this run."""
        h = self._prefix.copy()
        for part in what:
            h.update(part.encode() + b"\x00")
        return _value(h)

"""Trace and span ids derived from the journal's own names, so they survive a crash.

A run's trace id is a hash of its run id, and every span's id a hash of what the span
stands for (the run, a step id, an attempt): an execution that resumes a run after a
crash computes the same ids, so the spans it emits join the same trace under the same
parents, and a span that was cut short by the crash (and never exported) is emitted once,
by the execution that finishes it.
"""

from __future__ import annotations

import hashlib

__all__ = ["span_id_for", "trace_id_for"]


def _digest(size: int, parts: tuple[str, ...]) -> int:
    h = hashlib.blake2b(digest_size=size, person=b"stalwart-otel")
    for part in parts:
        h.update(part.encode())
        h.update(b"\x00")
    value = int.from_bytes(h.digest(), "big")
    return value or 1  # all zeros is the invalid id


def trace_id_for(run_id: str) -> int:
    """The 128-bit trace id of a run."""
    return _digest(16, ("trace", run_id))


def span_id_for(run_id: str, *what: str) -> int:
    """The 64-bit id of the span for ``what`` in run ``run_id``."""
    return _digest(8, ("span", run_id, *what))

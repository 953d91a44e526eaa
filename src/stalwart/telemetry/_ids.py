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

__all__ = ["span_id_for", "trace_id_for"]

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
    """The 64-bit id of the span for ``what`` in run ``run_id``: ``("run",)``, ``("step",
    step_id)``, ``("agent", first_step_id)``, ``("call", step_id, ...)``; what the n-th
    redrive (``dlq retry``) of a run executes is named ``("redrive", str(n), ...)``, apart
    from what earlier executions emitted."""
    return _value(_hasher(8, ("span", run_id, *what)))

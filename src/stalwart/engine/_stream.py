"""A run's journal as a live stream (``RunHandle.events()``).

The journal is the one record of what a run did, so following a run is reading its
journal as it grows: every event once, in order, ending with the event that ends the
run. Where the run executes does not matter. Appends made by executions in this process
wake the stream at once; on PostgreSQL so do the store's notifications (a run created,
ended or signalled anywhere); everything else is found by polling the store every
``poll`` seconds (the runtime's ``poll_interval`` by default).

Why not a callback API on the engine: a stream of journal events works the same for a
run executing here, in a worker on another machine, or already finished (it replays
the journal and ends), and its events are the ones ``runs events`` and ``--json`` show.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from .._clock import race_event
from ..errors import StoreError
from ..store._base import Event
from ._engine import Engine

__all__ = ["READ_GAP", "follow_events"]

READ_GAP = 0.05
"""Seconds between two reads of a followed run's journal, at least."""


async def follow_events(runtime: Engine, run_id: str, *, after: int = 0,
                        poll: float | None = None) -> AsyncIterator[Event]:
    """The events of ``run_id`` with ``seq > after``, as they are journaled, until the
    run has ended (see :meth:`stalwart.RunHandle.events`)."""
    await runtime.read_run(run_id)  # RunNotFoundError before the first event
    interval = runtime.poll_interval if poll is None else poll
    if interval <= 0:
        raise ValueError("poll must be positive")
    last = after
    read_at = float("-inf")
    while True:
        woken = runtime.journal_waiter(run_id)
        # Each read loads the run's journal: a burst of writes (a fast run's steps) is
        # read in batches, at most every READ_GAP seconds, not once per write.
        gap = read_at + READ_GAP - runtime.clock.monotonic()
        if gap > 0:
            await runtime.clock.sleep(gap)
        read_at = runtime.clock.monotonic()
        try:
            # The status first, then the events: a run seen ended has all its events
            # (its end and its last events are one transaction).
            rec = await runtime.read_run(run_id)
            events = await runtime.store.load_events(run_id)
        except StoreError as exc:
            if not exc.retryable:
                raise
            runtime.health.failed(f"following run {run_id}", exc)
        else:
            runtime.health.ok()
            for ev in events:
                if ev.seq > last:
                    last = ev.seq
                    yield ev
            if rec.is_terminal:
                return
        await race_event(woken, runtime.clock, interval)

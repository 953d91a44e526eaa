"""Cancellation that workflow code takes part in: shields and cleanup scopes.

A cancel normally ends a run at its next step (or at once, by the store, when the run
is parked). Code that must undo something first, a saga's compensations, needs two
things from the engine, both documented :class:`~stalwart.Context` methods (the shield
itself is a context variable of :mod:`._scope`, which the execution reads):

* ``with ctx.shield():`` steps begun inside run although the run's cancellation was
  requested (the cancel is observed again at the first step after it). Waits inside a
  shield (a retry's backoff) stay in memory and are not cut short by the cancel.
* ``async with ctx.cleanup_on_cancel():`` while the block runs, a cancel is *delivered*
  to the code as :class:`~stalwart.Cancelled` at its next step, also when the run is
  parked: the store wakes a parked run that holds an open scope instead of cancelling
  it (``Store.request_cancel``), and the execution that claims it replays to its first
  live step and raises there. The scope is a journaled step at each end
  (``stalwart.cleanup_opened`` and ``stalwart.cleanup_closed``): the store counts them
  (:func:`~stalwart.store._base.open_cleanups`) to know whether a run holds one.

A cancelled run is refused a live step, not a replayed one: a replay walks through the
journal's recorded steps as it always does and raises :class:`Cancelled` at the first
step that would run (``Execution.go_live``), so the cleanup code finds itself in the
same place as in the execution that first saw the cancel.
"""

from __future__ import annotations

from types import TracebackType
from typing import final

from ..errors import Cancelled, LeaseLostError, NonDeterminismError, StoreError
from ..store._base import CLEANUP_CLOSED, CLEANUP_OPENED
from ._execution import Execution
from ._scope import shield
from ._steps import recorded_value

__all__ = ["CleanupScope"]

_ENGINE_ERRORS = (LeaseLostError, StoreError, NonDeterminismError)


@final
class CleanupScope:
    """``async with ctx.cleanup_on_cancel():`` (see the module docstring)."""

    __slots__ = ("_ex", "_open")

    def __init__(self, ex: Execution) -> None:
        self._ex = ex
        self._open = False

    async def __aenter__(self) -> CleanupScope:
        if self._open:
            raise RuntimeError("a cleanup scope is entered once")
        await recorded_value(self._ex, CLEANUP_OPENED, lambda: None)
        self._open = True
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        """Close the scope when the block ended (normally, by an error or by the run's
        cancel); not when the execution stops inside it (the run parks, loses its
        lease, diverges from its journal): the scope stays open for the next one."""
        ended = exc is None or (isinstance(exc, Exception | Cancelled)
                                and not isinstance(exc, _ENGINE_ERRORS))
        if self._open and ended:
            self._open = False
            with shield():
                await recorded_value(self._ex, CLEANUP_CLOSED, lambda: None)
        return False

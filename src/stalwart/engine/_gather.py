"""Fan-out: ``ctx.gather`` runs awaitables as concurrent branches and joins them.

The gather takes a step id and records nothing; branch ``i`` numbers its steps under
``{gather_id}/{i}`` (a scope set inside the branch's task), so ids never depend on which
branch finishes first, and results come back in branch order.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from ..errors import LeaseLostError, StoreError
from ..store._base import RunStatus
from ._determinism import is_provisional
from ._execution import Execution
from ._scope import Scope, Suspend, set_scope
from ._steps import begin

__all__ = ["gather"]


async def gather(ex: Execution, aws: Sequence[Awaitable[Any]],
                 on_error: Literal["cancel", "collect"]) -> list[Any]:
    """``ctx.gather``: see :meth:`stalwart.Context.gather`."""
    if on_error not in ("cancel", "collect"):
        _close(aws)
        raise ValueError("on_error must be 'cancel' or 'collect'")
    try:
        gather_id, _ = begin(ex, "stalwart.gather")
        if ex.history is not None:
            err = ex.history.check_gather(gather_id, len(aws))
            if err is not None:
                raise ex.diverged(err)
    except BaseException:
        _close(aws)
        raise

    async def branch(i: int, aw: Awaitable[Any]) -> Any:
        set_scope(Scope(f"{gather_id}/{i}"))
        return await aw

    def cancelled(i: int) -> None:
        if ex.history is not None:
            ex.history.excuse(f"{gather_id}/{i}")

    tasks = [asyncio.ensure_future(branch(i, aw)) for i, aw in enumerate(aws)]
    return await _Join(tasks, on_error, cancelled).wait()


def _close(aws: Sequence[Awaitable[Any]]) -> None:
    """Close coroutines that will never run (no "never awaited" warning)."""
    for aw in aws:
        if inspect.iscoroutine(aw):
            aw.close()


class _Join:
    """Waits for the branches; see :meth:`stalwart.Context.gather`. ``cancelled(i)`` is
    told of each branch cancelled by a sibling's failure.

    A branch that diverged from the journal provisionally (see
    :func:`~stalwart.engine._determinism.is_provisional`) does not cancel the others: if
    one of them fails as the journal recorded, that failure is what cancelled this branch
    the first time, and it is raised; if none does, the divergence is."""

    def __init__(self, tasks: Sequence[asyncio.Future[Any]], on_error: str,
                 cancelled: Callable[[int], None]) -> None:
        self.tasks = tasks
        self.on_error = on_error
        self.cancelled = cancelled
        self.results: list[Any] = [None] * len(tasks)
        self.failures: dict[int, BaseException] = {}
        self.held: dict[int, BaseException] = {}
        self.control: list[BaseException] = []
        self.parks: list[Suspend] = []

    def classify(self, i: int, t: asyncio.Future[Any]) -> None:
        if t.cancelled():
            return
        exc = t.exception()
        if exc is None:
            self.results[i] = t.result()
        elif isinstance(exc, Suspend):
            self.parks.append(exc)
        elif is_provisional(exc):
            self.held[i] = exc
        elif isinstance(exc, Exception) and not isinstance(exc, LeaseLostError | StoreError):
            self.failures[i] = exc
            self.results[i] = exc
        else:
            self.control.append(exc)

    async def wait(self) -> list[Any]:
        index = {t: i for i, t in enumerate(self.tasks)}
        pending = set(self.tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    self.classify(index[t], t)
                if self.control or (self.failures and self.on_error == "cancel"):
                    await self._stop(pending, index)
                    pending = set()
        except BaseException:
            for t in self.tasks:
                t.cancel()
            raise
        return self.verdict()

    async def _stop(self, pending: set[asyncio.Future[Any]],
                    index: dict[asyncio.Future[Any], int]) -> None:
        """Cancel the branches still running (a sibling failed) and wait for them."""
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)
        for t in pending:
            self.classify(index[t], t)
            if t.cancelled():
                self.cancelled(index[t])

    def verdict(self) -> list[Any]:
        """The results, or what to raise instead."""
        if self.control:
            raise self.control[0]
        if self.failures and self.on_error == "cancel":
            for i in self.held:  # cancelled by that failure in the recorded run
                self.cancelled(i)
            raise self.failures[min(self.failures)]
        if self.held:
            raise self.held[min(self.held)]
        if self.parks:
            waiting = any(p.status == RunStatus.WAITING for p in self.parks)
            wakes = [p.wake_at for p in self.parks if p.wake_at is not None]
            raise Suspend(RunStatus.WAITING if waiting else RunStatus.SLEEPING,
                          min(wakes) if wakes else None)
        return self.results

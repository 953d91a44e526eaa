"""Sagas: a sequence of steps whose effects are undone, in reverse, when it fails.

A saga (Garcia-Molina and Salem, 1987) trades atomicity for compensation: each step
commits on its own, and a step that has an effect names the step that undoes it. When
the saga fails, the compensations of the steps that completed run in reverse order::

    async with ctx.saga() as saga:
        flight = await saga.step(book_flight, trip, compensate=cancel_flight)
        hotel = await saga.step(book_hotel, trip, compensate=cancel_hotel)
        await saga.pivot(charge_card, trip)       # the point of no return
        await saga.step(send_confirmation, trip)  # retried forward, never undone

The rules, precisely:

* **Forward steps.** ``saga.step(fn, *args, compensate=c)`` runs ``fn`` as a journaled
  step (``ctx.step``, or ``ctx.tool`` when ``fn`` is a :class:`~stalwart.Tool`). Once it
  has completed, ``c`` is registered, to be called with the step's result (or with no
  argument, if ``c`` takes none). A step that *fails* registers nothing: it is taken to
  have had no effect (make it atomic, or register its undo beforehand with
  :meth:`Saga.compensation`). ``compensate`` is checked before the step runs: a value
  that is not callable is a :class:`~stalwart.ConfigurationError` and the step is not
  run.
* **Failure.** When the block raises an exception (or the run is cancelled inside it),
  the registered compensations run, each as its own journaled step behind the policy
  stack (``ctx.tool``: retries, timeout, breaker; ``ctx.saga(policy=...)`` over the
  runtime's policy), with its own idempotency key. Reverse order is reverse *journal*
  order: compensations of steps made in ``gather`` branches run in the reverse order of
  their step ids, so a replay runs them in the same order. Then the block's exception
  propagates unchanged (a cancelled run ends cancelled), except an error that would
  dead-letter the run (a :class:`~stalwart.ResilienceError`): the saga was undone, a
  redrive could not resume it forward, so it is raised as
  :class:`~stalwart.SagaAbortedError` (the run fails) from the original.
* **A compensation that fails** (its retries exhausted, or an error not worth retrying)
  stops the compensation: the saga raises :class:`~stalwart.CompensationFailedError`, a
  ``ResilienceError``, so the run is dead-lettered at that compensation's step, with the
  saga's state (what was done, what was undone, what is left) in the error.
  ``stalwart dlq show`` prints it; ``stalwart dlq retry`` runs that compensation again
  with fresh attempts (completed ones replay) and goes on undoing.
* **Pivot.** ``saga.pivot(fn, ...)`` runs the saga's pivot transaction, the point of no
  return: it is not compensated itself, and it is the last step that can fail backward.
  If the pivot fails, the steps before it are compensated (the pivot is taken to have
  had no effect). Once it has completed, the saga is committed: a failure after it, and
  a cancel of the run, compensate nothing; the steps after a pivot are meant to be
  retried forward until they succeed (with a policy, or by ``dlq retry``), so they take
  no ``compensate`` (refused with a ``ConfigurationError``). A saga has at most one
  pivot.
* **Cancellation.** From its first compensable step until it ends, a saga holds the
  run's cancellation (``ctx.cleanup_on_cancel``): a cancel of the run, even while it is
  parked (sleeping, waiting for a signal, a child or an approval), wakes it instead of
  ending it, raises :class:`~stalwart.Cancelled` in the block, and the compensations
  run under ``ctx.shield()``; the run then ends ``cancelled``.
* **Crashes.** Everything above is journaled steps: a process killed mid-compensation is
  replayed by the next one, which skips the compensations already recorded and goes on
  with the rest. A compensation interrupted inside its own code runs again with the same
  idempotency key (the one window of every step: pass the key to the service).

What is not rolled back: anything outside the saga's steps (a ``ctx.step`` in the block
that is not ``saga.step`` has no compensation), and effects of a step that failed.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, final, overload

from ..errors import (
    Cancelled,
    CompensationFailedError,
    ConfigurationError,
    LeaseLostError,
    NonDeterminismError,
    ResilienceError,
    SagaAbortedError,
    StoreError,
)
from ._calls import tool_call
from ._cancel import CleanupScope
from ._execution import Execution
from ._policy import Policy
from ._scope import shield
from ._steps import run_step
from ._tools import Tool

__all__ = ["Saga"]

T = TypeVar("T")

_ENGINE_ERRORS = (LeaseLostError, StoreError, NonDeterminismError)
"""Errors that end the execution, not the saga: the run is replayed or dead-lettered as
it stands, and nothing is compensated by this execution."""
_TOOL_NAME = re.compile(r"[^a-zA-Z0-9_-]+")


@dataclass(frozen=True, slots=True)
class _Undo:
    """A registered compensation."""

    position: tuple[int, ...]
    """Where in the journal it was registered: the forward step's id, as a path."""
    step: str
    """The forward step's name (or the compensation's, for an explicit one)."""
    tool: Tool[Any, Any]
    arguments: dict[str, Any]


def _path(step_id: str) -> tuple[int, ...]:
    return tuple(int(p) for p in step_id.split("/"))


def _name_of(fn: Any) -> str:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return str(getattr(target, "__name__", None) or type(target).__name__)


@functools.lru_cache(maxsize=256)
def _as_tool(fn: Callable[..., Any]) -> Tool[Any, Any]:
    name = _TOOL_NAME.sub("_", _name_of(fn)).strip("_")[:64] or "compensation"
    return Tool(fn, name=name)


def _bind(tool: Tool[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
          ) -> dict[str, Any]:
    """The call ``fn(*args, **kwargs)`` as the keyword arguments a tool takes."""
    sig = inspect.signature(tool.fn)
    params = [p for p in sig.parameters.values() if p.name != tool.call_param]
    try:
        bound = sig.replace(parameters=params).bind(*args, **kwargs)
    except TypeError as exc:
        raise ConfigurationError(f"saga: the compensation {tool.name!r} cannot be called "
                                 f"with these arguments: {exc}") from None
    return dict(bound.arguments)


def _compensation(compensate: Any, what: str) -> Tool[Any, Any]:
    if isinstance(compensate, Tool):
        return compensate
    if not callable(compensate):
        raise ConfigurationError(f"saga: compensate for {what} must be a callable or a Tool, "
                                 f"not {type(compensate).__name__} ({compensate!r})")
    try:
        return _as_tool(compensate)
    except TypeError:  # unhashable callable: no cache
        return Tool(compensate, name=_TOOL_NAME.sub("_", _name_of(compensate)) or "undo")


@final
class Saga:
    """A saga in a workflow: ``async with ctx.saga() as saga`` (see the module docstring).

    Args:
        execution: the run's execution (``ctx.saga()`` passes it: a saga is built on
            the engine's step API, as every pattern is).
        policy: the policies of the compensations (over the runtime's).
    """

    def __init__(self, execution: Execution, *, policy: Policy | None = None) -> None:
        self._ex = execution
        self._policy = policy
        self._undo: list[_Undo] = []
        self._done: list[str] = []
        self._scope: CleanupScope | None = None
        self._pivot: str | None = None
        self._entered = False

    @property
    def done(self) -> list[str]:
        """The forward steps completed, in the order they completed here."""
        return list(self._done)

    @property
    def pivoted(self) -> bool:
        """Whether the pivot has completed (the saga is committed)."""
        return self._pivot is not None

    async def __aenter__(self) -> Saga:
        if self._entered:
            raise ConfigurationError("a Saga is entered once; make a new one with ctx.saga()")
        self._entered = True
        return self

    # -- forward ---------------------------------------------------------------------

    @overload
    async def step(self, fn: Callable[..., Awaitable[T]], /, *args: Any,
                   compensate: Any = None, name: str | None = None, **kwargs: Any) -> T: ...

    @overload
    async def step(self, fn: Callable[..., T], /, *args: Any, compensate: Any = None,
                   name: str | None = None, **kwargs: Any) -> T: ...

    async def step(self, fn: Any, /, *args: Any, compensate: Any = None,
                   name: str | None = None, **kwargs: Any) -> Any:
        """Run a forward step; once it completed, ``compensate`` undoes it if the saga
        fails (called with the step's result, or with nothing if it takes no argument)."""
        self._check_open()
        what = name or (fn.name if isinstance(fn, Tool) else _name_of(fn))
        undo = None if compensate is None else _compensation(compensate, f"step {what!r}")
        if undo is not None and self._pivot is not None:
            raise ConfigurationError(
                f"saga: step {what!r} comes after the pivot {self._pivot!r}: the saga is "
                "committed, its later steps are retried forward, never compensated; drop "
                "compensate=")
        if undo is not None:
            await self._hold_cancel()
        position = _path(self._ex.next_step_id())
        result = await self._run(fn, args, kwargs, name)
        self._done.append(what)
        if undo is not None:
            params = [p for p in inspect.signature(undo.fn).parameters
                      if p != undo.call_param]
            arguments = {params[0]: result} if params else {}
            self._undo.append(_Undo(position, what, undo, arguments))
        return result

    async def pivot(self, fn: Any, /, *args: Any, name: str | None = None,
                    **kwargs: Any) -> Any:
        """Run the pivot step: if it fails, the steps before it are compensated; once it
        completed, nothing is (see the module docstring)."""
        self._check_open()
        what = name or (fn.name if isinstance(fn, Tool) else _name_of(fn))
        if self._pivot is not None:
            raise ConfigurationError(f"saga: a saga has one pivot; {self._pivot!r} was "
                                     f"already, {what!r} cannot be another")
        result = await self._run(fn, args, kwargs, name)
        self._done.append(what)
        self._pivot = what
        if self._scope is not None:  # committed: a cancel has nothing left to undo
            scope, self._scope = self._scope, None
            await scope.__aexit__(None, None, None)
        return result

    async def compensation(self, fn: Any, /, *args: Any, **kwargs: Any) -> None:
        """Register ``fn(*args, **kwargs)`` as a compensation now, before the step it
        undoes (for a step that may have had an effect even when it fails). It runs in
        reverse order with the others, as if a step at this point had registered it."""
        self._check_open()
        if self._pivot is not None:
            raise ConfigurationError("saga: no compensation after the pivot "
                                     f"{self._pivot!r}: the saga is committed")
        undo = _compensation(fn, "compensation()")
        arguments = _bind(undo, args, kwargs)
        await self._hold_cancel()
        self._undo.append(_Undo(_path(self._ex.next_step_id()), undo.name, undo,
                                arguments))

    def _check_open(self) -> None:
        if not self._entered:
            raise ConfigurationError("use a saga inside `async with ctx.saga() as saga:`")

    async def _hold_cancel(self) -> None:
        if self._scope is None:
            self._scope = CleanupScope(self._ex)
            await self._scope.__aenter__()

    async def _run(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                   name: str | None) -> Any:
        if isinstance(fn, Tool):
            return await tool_call(self._ex, fn, _bind(fn, args, kwargs), policy=None,
                                   check=None)
        return await run_step(self._ex, fn, args, kwargs, name=name)

    # -- backward --------------------------------------------------------------------

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        if exc is None or not isinstance(exc, Exception | Cancelled) or isinstance(
                exc, _ENGINE_ERRORS):
            # Done, or the execution ends here (parked, lease lost, a divergence): the
            # run goes on (or is replayed) with the saga as it stands.
            if exc is None and self._scope is not None:
                await self._scope.__aexit__(None, None, None)
            return False
        if self._pivot is None and self._undo:
            await self._compensate(exc)
        if self._scope is not None:
            with shield():
                await self._scope.__aexit__(type(exc), exc, exc.__traceback__)
        if self._pivot is None and self._undo and isinstance(exc, ResilienceError):
            raise SagaAbortedError(
                f"saga rolled back after {type(exc).__name__}: {exc}; undone: "
                f"{', '.join(u.step for u in reversed(self._undo))}",
                undone=[u.step for u in sorted(self._undo, key=lambda u: u.position,
                                                reverse=True)],
                run_id=self._ex.run_id) from exc
        return False

    async def _compensate(self, exc: BaseException) -> None:
        order = sorted(self._undo, key=lambda u: u.position, reverse=True)
        undone: list[str] = []
        with shield():
            for i, undo in enumerate(order):
                step_id = self._ex.next_step_id()
                try:
                    await tool_call(self._ex, undo.tool, undo.arguments, policy=self._policy,
                                    check=None)
                except _ENGINE_ERRORS:
                    raise
                except Exception as failure:
                    left = [u.step for u in order[i:]]
                    raise CompensationFailedError(
                        f"saga: the compensation {undo.tool.name!r} of step {undo.step!r} "
                        f"(step {step_id}) failed: {type(failure).__name__}: {failure}; "
                        f"done: {', '.join(self._done) or '-'}; undone: "
                        f"{', '.join(undone) or '-'}; not undone: {', '.join(left)}; the "
                        f"saga failed on {type(exc).__name__}: {exc}",
                        compensation=undo.tool.name, done=list(self._done), undone=undone,
                        not_undone=left, saga_error=f"{type(exc).__name__}: {exc}",
                        run_id=self._ex.run_id, step_id=step_id) from failure
                undone.append(undo.step)

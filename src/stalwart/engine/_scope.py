"""Where the calling code is: the step it runs in, the scope that numbers its steps.

Every call on :class:`~stalwart.Context` is a *step* with a deterministic, hierarchical
step id. Top-level steps are numbered ``1, 2, 3, ...``; branch ``i`` of a ``gather`` at
step ``5`` numbers its own steps ``5/i/1, 5/i/2, ...``, so ids never depend on which
branch finishes first. A branch's :class:`Scope` travels in a ``ContextVar`` set inside
the branch task, so a coroutine created with the parent context (``agent.run(ctx,
...)``) still numbers its steps inside the branch that awaits it.

Three more facts live in context variables, read by the code that runs under them: the
:class:`StepInfo` of the step whose user code runs (:func:`current_step`), and whether
the code runs inside ``ctx.shield()`` (:func:`shielded`).

The bottom of the engine: it imports nothing of it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, final

from ..errors import ContextMisuseError
from ..store._base import RunStatus

__all__ = ["Scope", "StepInfo", "Suspend", "bind_step", "callable_name", "current_scope",
           "current_step", "is_async", "outcome_problem", "running_step", "set_scope",
           "shield", "shielded", "unbind_step"]


class Suspend(BaseException):
    """Parks the run: its task ends, the run waits in the store until ``wake_at``."""

    def __init__(self, status: RunStatus, wake_at: float | None) -> None:
        super().__init__(status, wake_at)
        self.status = status
        self.wake_at = wake_at


@dataclass(slots=True)
class Scope:
    """Numbers the steps of one scope: the run's top level, or a gather's branch."""

    prefix: str
    counter: int = 0

    def next_id(self) -> str:
        self.counter += 1
        return f"{self.prefix}/{self.counter}" if self.prefix else str(self.counter)

    def peek(self) -> str:
        """The id :meth:`next_id` will give."""
        n = self.counter + 1
        return f"{self.prefix}/{n}" if self.prefix else str(n)


@final
@dataclass(frozen=True, slots=True)
class StepInfo:
    """What the code running inside a step knows about it.

    ``idempotency_key`` is ``"{run_id}:{step_id}"``: identical on every retry of the step
    and after a crash and resume, so an external service can deduplicate the effect.

    ``fencing_token`` is the number of the run's lease under which this execution runs
    the step. Every claim of the run (a resume, a takeover) makes a larger one, and the
    engine stops an execution whose lease was taken over before its next step. Code
    already *inside* a step when its process paused cannot be stopped that way: send the
    token with the effect, and a service that keeps the largest token it has seen per
    idempotency key can refuse a smaller one (a fencing token, as in Kleppmann's
    argument about distributed locks). See "Fencing" in docs/design.md.

    .. versionadded:: 0.1.0 ``fencing_token``
    """

    run_id: str
    step_id: str
    name: str
    attempt: int
    fencing_token: int

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.step_id}"


_scope_var: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "stalwart_scope", default=None)
_step_var: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar(
    "stalwart_step", default=None)
_shield_var: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "stalwart_shield", default=False)


def current_step() -> StepInfo:
    """The step the calling code runs in (inside ``ctx.step`` functions and tools).

    Raises:
        ContextMisuseError: called outside a step.
    """
    info = _step_var.get()
    if info is None:
        raise ContextMisuseError("current_step() is only available inside a step")
    return info


def running_step() -> StepInfo | None:
    """The step whose code runs here, or ``None`` (workflow code)."""
    return _step_var.get()


def bind_step(info: StepInfo) -> contextvars.Token[StepInfo | None]:
    """Make ``info`` the current step (for the user code about to run)."""
    return _step_var.set(info)


def unbind_step(token: contextvars.Token[StepInfo | None]) -> None:
    _step_var.reset(token)


def current_scope(root: Scope) -> Scope:
    """The scope that numbers the calling code's steps (``root``: the run's top level)."""
    return _scope_var.get() or root


def set_scope(scope: Scope) -> None:
    """Number the calling task's steps in ``scope`` (a run's root, a gather's branch)."""
    _scope_var.set(scope)


def shielded() -> bool:
    """Whether the calling code runs inside ``ctx.shield()``."""
    return _shield_var.get()


@contextlib.contextmanager
def shield() -> Iterator[None]:
    """``with ctx.shield():`` (see :mod:`stalwart.engine._cancel`)."""
    token = _shield_var.set(True)
    try:
        yield
    finally:
        _shield_var.reset(token)


def outcome_problem(check: Callable[[Any], object], value: Any) -> str | None:
    """Run an outcome check: ``None`` when ``value`` passes, else what was wrong.

    The check fails by returning ``False`` or a non-empty string (the reason), or by
    raising; ``True`` and ``None`` pass."""
    try:
        verdict = check(value)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if verdict is False:
        return f"{callable_name(check)} returned False"
    if isinstance(verdict, str) and verdict:
        return verdict
    return None


def callable_name(fn: Any) -> str:
    """A step's default name: the function's qualified name."""
    target = fn.func if isinstance(fn, functools.partial) else fn
    return str(getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
               or type(target).__name__)


def is_async(fn: Any) -> bool:
    """Whether calling ``fn`` gives a coroutine (an async function or callable object)."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    return call is not None and inspect.iscoroutinefunction(call)

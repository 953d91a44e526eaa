"""The workflow context: the only door to non-determinism.

Every call on :class:`Context` is a *step* with a deterministic, hierarchical step id
(``3``, ``5/1/2``: see :mod:`stalwart.engine._scope`). When a step id already has an
outcome in the journal, the call returns the recorded result (or re-raises the recorded
error) without running anything; code that no longer fits the journal raises
:class:`~stalwart.NonDeterminismError` before the step runs
(:mod:`stalwart.engine._determinism`).

This class is the typed, documented face of the engine's step API: each method checks
its arguments' types for a type checker and hands the call to the engine function that
implements it (:mod:`stalwart.engine._steps`, ``_calls``, ``_llm``, ``_children``,
``_gather``, ``_cancel``). The coordination patterns it offers (``supervise``, ``saga``)
are built on that same API, in the engine; those in :mod:`stalwart.patterns` (graphs,
handoffs) are built with this class, as user code is.
"""

from __future__ import annotations

import math
import uuid as uuid_mod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any, Generic, Literal, ParamSpec, TypeVar, final, overload

from .engine import _actor, _approval, _children, _steps
from .engine._actor import Actor, Turn, message_body
from .engine._approval import Decision
from .engine._budget import Budget, limits_of, weights_of
from .engine._calls import tool_call
from .engine._cancel import CleanupScope
from .engine._children import ChildOutcome, ChildRun
from .engine._execution import Execution
from .engine._gather import gather
from .engine._llm import Prompt, llm
from .engine._policy import Policy
from .engine._saga import Saga
from .engine._scope import StepInfo, current_step, outcome_problem, shield
from .engine._supervisor import ChildSpec, Strategy, supervise
from .engine._tools import Tool
from .engine._workflow import Workflow
from .models import Model, ModelOptions

__all__ = ["ActorContext", "Context", "StepInfo", "current_step", "outcome_problem"]

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S")
M = TypeVar("M")


@final
class Context:
    """Handed to every workflow function; all of its effects go through here."""

    __slots__ = ("_ex",)

    def __init__(self, execution: Execution) -> None:
        self._ex = execution

    # -- facts -----------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self._ex.run_id

    @property
    def workflow_name(self) -> str:
        return self._ex.workflow.name

    @property
    def is_replaying(self) -> bool:
        """True while the run is re-reading recorded steps rather than running new ones."""
        return self._ex.replaying

    @property
    def execution(self) -> Execution:
        """The engine's execution of this run: the internal API that stalwart's agents
        and patterns are built on (the engine's step functions take it, and it knows the
        run's interceptor, models and policies, where a recorded step began, how to
        journal a note on a step). Internal: not for workflow code, and it may change
        without notice; everything a workflow needs is a method of this class."""
        return self._ex

    def next_step_id(self) -> str:
        """The id the next step begun here (this branch) will get: patterns order what
        they keep by journal position with it (a saga's compensations)."""
        return self._ex.next_step_id()

    # -- steps -----------------------------------------------------------------------

    @overload
    async def step(self, fn: Callable[P, Awaitable[T]], /, *args: P.args,
                   **kwargs: P.kwargs) -> T: ...

    @overload
    async def step(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    # With ``name=`` or ``check=`` the arguments are not checked against ``fn``: PEP 612
    # allows no keyword-only parameter between ``*args: P.args`` and ``**kwargs``, and
    # mypy cannot see that ``P`` excludes these two (hence the ignores).
    @overload
    async def step(self, fn: Callable[..., Awaitable[T]], /, *args: Any, name: str,  # type: ignore[overload-cannot-match]
                   check: Callable[[T], object] | None = None, **kwargs: Any) -> T: ...

    @overload
    async def step(self, fn: Callable[..., Awaitable[T]], /, *args: Any, name: str | None = None,  # type: ignore[overload-cannot-match]
                   check: Callable[[T], object], **kwargs: Any) -> T: ...

    @overload
    async def step(self, fn: Callable[..., T], /, *args: Any, name: str,  # type: ignore[overload-cannot-match]
                   check: Callable[[T], object] | None = None, **kwargs: Any) -> T: ...

    @overload
    async def step(self, fn: Callable[..., T], /, *args: Any, name: str | None = None,  # type: ignore[overload-cannot-match]
                   check: Callable[[T], object], **kwargs: Any) -> T: ...

    async def step(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once, durably; a recorded step returns its record.

        Sync functions run in the runtime's thread pool. The result must be JSON-compatible
        or a pydantic model; the function's return annotation, when present, is used to
        rebuild it with its type (without one, the result is plain JSON: a model comes
        back as its data). An exception is recorded and re-raised (also on replay).
        Code inside the step can read its idempotency key with :func:`current_step`.

        ``name`` (keyword) names the step in the journal (default: ``fn``'s qualified
        name). ``check`` (keyword) is an outcome check on the result (see
        :func:`outcome_problem`): a result that fails it fails the step with
        :class:`~stalwart.OutcomeCheckError`, journaled like any other failure (a
        semantic failure: "it returned, but wrong"). Neither is passed to ``fn``.
        """
        name = kwargs.pop("name", None)
        check = kwargs.pop("check", None)
        return await _steps.run_step(self._ex, fn, args, kwargs, name=name, check=check)

    @overload
    async def split_budget(self, weights: Mapping[str, float], /) -> dict[str, Budget]: ...

    @overload
    async def split_budget(self, weights: Sequence[float], /) -> list[Budget]: ...

    async def split_budget(self, weights: Mapping[str, float] | Sequence[float], /,
                           ) -> dict[str, Budget] | list[Budget]:
        """What remains of the budgets in force here (the runtime's, the workflow's and
        those of the agent runs this code is inside: for each limit the least left),
        divided by weight (:meth:`Budget.split`): one share per sub-agent, to run it
        with (``agent.run(ctx, task, budget=share)``).

        A journaled step (``budget:split``): a replay gets the shares the first execution
        computed, whatever the journal holds by then. With no budget in force, every
        share is ``Budget()`` (no limit).

        Raises:
            ConfigurationError: bad weights (see :meth:`Budget.split`).
            BudgetExceededError: nothing remains of a limit, or a share would be zero.
        """
        ex = self._ex
        _, ws = weights_of(weights)  # bad weights fail before anything is journaled

        async def split() -> list[dict[str, Any]]:  # in the loop: it reads the agent scopes
            left = ex.budget.left() or Budget()
            return [limits_of(p) for p in left.split([float(w) for w in ws])]

        shares = [Budget(**p) for p in await self.step(split, name="budget:split")]
        if isinstance(weights, Mapping):
            return dict(zip(weights, shares, strict=True))
        return shares

    async def now(self) -> float:
        """Wall-clock time (epoch seconds), recorded: replay sees the same value."""
        return await _steps.now(self._ex)

    async def random(self) -> float:
        """A random float in [0, 1), recorded."""
        return await _steps.random(self._ex)

    async def uuid(self) -> uuid_mod.UUID:
        """A random UUID (version 4), recorded."""
        return await _steps.uuid(self._ex)

    # -- changing code under running runs ----------------------------------------------

    async def patched(self, change_id: str) -> bool:
        """Whether this run takes the code changed under ``change_id`` (Temporal's
        ``patched``): ``True`` for a run that reaches this point with the change in
        the code, ``False`` for one whose journal shows it went past this point
        before the change. Deploy a change to a workflow with runs in flight as
        ``if await ctx.patched("id"): new else: old``; a run started before the deploy
        replays the old way, and every other run the new way, each the same on every
        replay (the first ``True`` journals a marker step). Once no run that went the
        old way is left, replace the branch with :meth:`deprecate_patch`.

        Raises:
            ConfigurationError: ``change_id`` is not printable text of 1-200 characters.
        """
        return await _steps.patched(self._ex, change_id)

    def deprecate_patch(self, change_id: str) -> None:
        """The second half of a change's life: the old code is gone, ``patched``'s
        branch with it. Runs made while ``patched("id")`` was in the code hold its
        marker here: this takes it (they replay); other runs journal nothing."""
        _steps.deprecate_patch(self._ex, change_id)

    # -- durable timers and signals ----------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        """Sleep durably: the wake-up time is journaled, and a long sleep parks the run
        (its task ends, nothing is held in memory) until a worker wakes it on time — also
        after a restart."""
        await _steps.sleep(self._ex, seconds)

    async def wait_for_signal(self, name: str, *, timeout: float | None = None) -> Any:
        """Wait for the next signal ``name`` sent with ``app.signal``, durably.

        A signal sent before the wait starts is kept and delivered here. Each signal is
        delivered to exactly one wait. Returns its payload.

        Raises:
            SignalTimeoutError: ``timeout`` seconds passed first.
        """
        return await _steps.wait_for_signal(self._ex, name, timeout)

    async def approval(self, name: str, payload: Any, *, timeout: float | None = None,
                       default: Literal["approve", "deny"] | None = None) -> Decision:
        """Ask a human to approve ``payload``, durably, and return their decision.

        The run parks (nothing held in memory, across restarts) until someone decides
        with ``app.approve`` / ``app.deny`` or ``stalwart approve`` / ``deny``. The
        decision is bound to this run, this step and this exact payload through a
        token (SHA-256 of the three, the payload as canonical JSON): a decision made on
        a payload that changed since it was shown is refused, the same decision twice
        is idempotent, and a decision is final. It is journaled at this step (who,
        when, comment, token) and a replay returns it without waiting.

        Args:
            name: what is being approved (``stalwart approvals`` lists it).
            payload: the JSON-serializable value the human decides on.
            timeout: seconds to wait; ``None`` waits for ever.
            default: the decision a timeout makes (``"approve"`` or ``"deny"``).

        Raises:
            ApprovalTimeoutError: ``timeout`` passed undecided and there is no default.
        """
        return await _approval.approval(self._ex, name, payload, timeout=timeout,
                                        default=default)

    # -- child runs ------------------------------------------------------------------

    async def child(self, workflow: Workflow[P, T], /, *args: P.args,
                    **kwargs: P.kwargs) -> T:
        """Run ``workflow`` as a child run (its own journal, linked to this run) and
        return its result; a failed child raises :class:`RunFailedError`."""
        result: T = await _children.child(self._ex, workflow, args, kwargs)
        return result

    async def start_child(self, workflow: Workflow[P, Any], /, *args: P.args,
                          **kwargs: P.kwargs) -> ChildRun:
        """Start ``workflow`` as a child run and return its handle without waiting for
        it (one journaled step). Wait with :meth:`wait_any`, stop it with
        :meth:`cancel_child`."""
        return await _children.start_child(self._ex, workflow, args, kwargs)

    async def wait_any(self, children: Sequence[ChildRun], /) -> ChildOutcome:
        """Wait until one of ``children`` has ended and return how (the first ended one
        in list order; a replay returns the recorded one)."""
        return await _children.wait_any(self._ex, children)

    async def cancel_child(self, child: ChildRun, /) -> ChildOutcome:
        """Cancel a child run (and its own children), wait until it has ended, and
        return how it ended (it may have finished before the cancel reached it)."""
        return await _children.cancel_child(self._ex, child)

    # -- actors ----------------------------------------------------------------------

    async def send(self, actor: Actor[Any, M, Any] | str, key: str | int, message: M, /
                   ) -> str:
        """Put ``message`` into the mailbox of instance ``key`` of ``actor`` (one journaled
        step; the instance is made if new) and return the message's id, which is the
        step's: a repeat after a crash is the same message, handled once.

        Raises:
            ActorNotFoundError: ``actor`` is not declared on this runtime.
            ActorKeyError: ``key`` is not a str or int (or is empty, too long, not
                printable).
            SerializationError: ``message`` cannot be stored, or is not of the type the
                handler declares.
        """
        return (await _actor.send(self._ex, actor, key, message))[2]

    async def ask(self, actor: Actor[Any, M, T] | str, key: str | int, message: M, /, *,
                  timeout: float | None = None) -> T:
        """Send ``message`` (as :meth:`send`) and wait durably for the handler's reply: a
        crash of this run, or of the instance, while it is on its way loses nothing.

        Raises:
            ActorError: the handler raised (``__cause__`` is its error, rebuilt).
            SignalTimeoutError: no reply within ``timeout`` seconds (the message stays
                sent; a later reply is kept, unread).
        """
        result: T = await _actor.ask(self._ex, actor, key, message, timeout=timeout)
        return result

    # -- patterns --------------------------------------------------------------------

    async def supervise(self, children: Sequence[ChildSpec | Workflow[Any, Any]], /, *,
                        strategy: Strategy = "one_for_one", max_restarts: int = 3,
                        within: float = 60.0) -> dict[str, ChildOutcome]:
        """Run ``children`` as child runs under an OTP-style supervisor: restart them as
        their restart types and ``strategy`` say, fail with
        :class:`~stalwart.RestartIntensityError` after more than ``max_restarts``
        restarts within ``within`` seconds. See :mod:`stalwart.patterns`."""
        return await supervise(self._ex, children, strategy=strategy,
                               max_restarts=max_restarts, within=within)

    def saga(self, *, policy: Policy | None = None) -> Saga:
        """A saga: ``async with ctx.saga() as saga: await saga.step(book, x,
        compensate=cancel)``; on failure or cancel, the completed steps' compensations
        run in reverse (see :class:`~stalwart.Saga`)."""
        return Saga(self._ex, policy=policy)

    def shield(self) -> AbstractContextManager[None]:
        """``with ctx.shield():`` steps inside run although the run was cancelled (to
        clean up, as a saga compensates); waits inside stay in memory. See
        :mod:`stalwart.engine._cancel`."""
        return shield()

    def cleanup_on_cancel(self) -> CleanupScope:
        """``async with ctx.cleanup_on_cancel():`` a cancel of the run inside the block
        is raised in its code as :class:`~stalwart.Cancelled`, also while the run is
        parked (the store wakes it instead of ending it), so the code can clean up under
        :meth:`shield`. Each end of the block is a journaled step."""
        return CleanupScope(self._ex)

    # -- tools and models --------------------------------------------------------------

    async def tool(self, tool: Tool[Any, T], /, *, policy: Policy | None = None,
                   check: Callable[[T], object] | None = None, **arguments: Any) -> T:
        """Call a tool as one journaled step behind the policy stack.

        Arguments are validated against the tool's signature first
        (:class:`~stalwart.ToolArgumentsError`). The tool receives a
        :class:`~stalwart.ToolCall` whose ``idempotency_key`` is stable across retries
        and resumes. Policies: the tool's own, over the runtime's; ``policy`` over both.
        ``check`` is an outcome check on the result: a result that fails it is a failed
        attempt (:class:`~stalwart.OutcomeCheckError`, retryable) — it counts against the
        tool's circuit breaker and is retried like an error.
        """
        result: T = await tool_call(self._ex, tool, arguments, policy=policy, check=check)
        return result

    @overload
    async def llm(self, model: str | Model, prompt: Prompt, /, *,
                  output_type: None = None, instructions: str = "",
                  policy: Policy | None = None, options: ModelOptions | None = None,
                  name: str = "llm", pool: str | None = None,
                  check: Callable[[str], object] | None = None) -> str: ...

    @overload
    async def llm(self, model: str | Model, prompt: Prompt, /, *, output_type: type[T],
                  instructions: str = "", policy: Policy | None = None,
                  options: ModelOptions | None = None, name: str = "llm",
                  pool: str | None = None,
                  check: Callable[[T], object] | None = None) -> T: ...

    async def llm(self, model: str | Model, prompt: Prompt, /, *,
                  output_type: Any = None, instructions: str = "",
                  policy: Policy | None = None, options: ModelOptions | None = None,
                  name: str = "llm", pool: str | None = None,
                  check: Callable[[Any], object] | None = None) -> Any:
        """One model call, without an agent, as a journaled step behind the policy stack.

        ``prompt`` is a user message (``str``), a :class:`~stalwart.Message`, or a
        conversation (a list of them). ``model`` is a spec (``"openai:gpt-4.1-mini"``,
        ``"sim:x"``) or a :class:`~stalwart.Model`; the policy's fallback chain applies.
        With ``output_type`` the answer is read as that type (JSON; the schema goes into
        the system message), else it is the text. A resumed run returns the recorded
        answer without calling the model again.

        The step is recorded as the model turn ``chat:{name}``: costs, ``stats``,
        ``runs trace`` and ``runs fork --model`` treat it like an agent's turn. An answer
        that does not fit ``output_type`` or fails ``check`` is a failed attempt
        (:class:`~stalwart.OutcomeCheckError`): it counts against the model's breaker
        and is retried by the policy, like an error.
        """
        return await llm(self._ex, model, prompt, output_type=output_type,
                         instructions=instructions, policy=policy, options=options,
                         name=name, pool=pool, check=check)

    # -- fan-out ---------------------------------------------------------------------

    @overload
    async def gather(self, *aws: Awaitable[T],
                     on_error: Literal["cancel"] = "cancel") -> list[T]: ...

    @overload
    async def gather(self, *aws: Awaitable[T],
                     on_error: Literal["collect"]) -> list[T | BaseException]: ...

    async def gather(self, *aws: Awaitable[Any],
                     on_error: Literal["cancel", "collect"] = "cancel") -> list[Any]:
        """Run the awaitables as concurrent branches; join when all are done.

        Results come back in branch order, whatever order the branches finish in. With
        ``on_error="cancel"`` the first failure cancels the other branches and the failure
        of the lowest-numbered failed branch is raised; with ``"collect"`` every branch
        runs to its end and exceptions are returned in place of results.
        """
        return await gather(self._ex, aws, on_error)


@final
class ActorContext(Generic[S]):
    """What an actor's handler is given for one message (``@app.actor``): the instance's
    key and state, the message's id, its reminders, and :attr:`ctx`, the instance's
    :class:`Context`, for durable work (steps, tools, model calls, sends and asks).

    Change the state in place or assign :attr:`state`; it is committed with the
    message's acknowledgement when the handler returns, and dropped (with the reminders
    set meanwhile) when it raises.
    """

    __slots__ = ("_actor", "_ctx", "_turn")

    def __init__(self, ctx: Context, actor: Actor[S, Any, Any], turn: Turn) -> None:
        self._ctx = ctx
        self._actor = actor
        self._turn = turn

    @property
    def ctx(self) -> Context:
        """The instance's durable context (its steps are journaled with the message)."""
        return self._ctx

    @property
    def actor(self) -> str:
        """The actor's name."""
        return self._actor.name

    @property
    def key(self) -> str:
        """The instance's key (an ``int`` key as its decimal text)."""
        return self._turn.key

    @property
    def message_id(self) -> str:
        """The message's id, its idempotency key (``reminder:{name}@{due}`` for a
        reminder): the same on every re-execution of the handler."""
        return self._turn.message.id

    @property
    def reminder(self) -> str | None:
        """The name of the reminder being handled, or ``None`` for a sent message."""
        return self._turn.message.reminder

    @property
    def state(self) -> S:
        """The instance's state (a copy of the committed one, for this message)."""
        state: S = self._turn.state
        return state

    @state.setter
    def state(self, value: S) -> None:
        self._turn.state = value

    def remind(self, name: str, after: float | timedelta, message: object) -> None:
        """Hand ``message`` to this instance's handler ``after`` seconds from the commit
        of this message (on the runtime's clock), as a reminder named ``name``; setting
        a name again replaces it. Kept with the state: a crash or a restart loses none.

        Raises:
            ValueError: ``after`` is negative or not finite.
            SerializationError: ``message`` is not of the handler's message type.
        """
        seconds = after.total_seconds() if isinstance(after, timedelta) else float(after)
        if not 0 <= seconds < math.inf:
            raise ValueError(f"remind() needs a finite, non-negative delay, not {after!r}")
        body = message_body(self._actor, message)
        self._turn.cancelled_reminders.discard(name)
        self._turn.set_reminders[name] = (seconds, body)

    def cancel_reminder(self, name: str) -> None:
        """Drop the reminder ``name`` (set earlier or in this handler), if there is one."""
        self._turn.set_reminders.pop(name, None)
        self._turn.cancelled_reminders.add(name)

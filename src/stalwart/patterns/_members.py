"""What the ensembles share: asking a member (an agent or a function) as a journaled
step, the canonical form of an answer, and how a pattern escalates.

A *member* of an ensemble is an :class:`~stalwart.Agent` or a plain function of one
argument (sync or async). An agent is asked with a prompt (text) and runs its loop:
every model turn is a journaled step behind the policy stack. A function gets the
pattern's input object (``task`` for a vote, a :class:`MixtureInput`, ...) and runs as
one journaled step (``ctx.step``) named ``{pattern}:{member}``. Either way a resumed run
replays the answer from the journal and pays for nothing twice.

A member that fails (its retries exhausted, its answer invalid after re-asks, a function
that raised) is a member that gave no answer: the pattern decides what that means (a
vote counts it as an abstention). Errors of the run itself (the journal, the lease, a
budget, non-determinism) are never swallowed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, final

from pydantic import BaseModel, TypeAdapter, ValidationError

from .._agent import Agent
from .._context import current_step
from .._serde import error_type_name
from ..errors import (
    BudgetExceededError,
    ConfigurationError,
    ContextMisuseError,
    EnsembleError,
    EscalatedError,
    LeaseLostError,
    NonDeterminismError,
    StoreError,
)

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["Escalate", "Member", "Reply", "ask", "canonical", "escalation", "labels",
           "to_json"]

Member: TypeAlias = "Agent[Any] | Callable[[Any], Any]"
"""An agent, or a function of the pattern's input (sync or async)."""

Escalate: TypeAlias = Literal["error", "dlq", "approval"]
"""How a pattern escalates what it cannot settle: ``"error"`` raises its typed error
(the run fails, or the caller catches it); ``"dlq"`` raises
:class:`~stalwart.errors.EscalatedError` so the run waits in the dead-letter queue for
a human, the evidence attached; ``"approval"`` asks a human with ``ctx.approval`` (the
run parks until someone decides, the evidence is the payload): approved, the pattern
goes on as its docstring says (a vote returns the plurality, a mixture aggregates, a
refine or Reflexion loop returns its last answer); denied, it raises its typed error."""

ESCALATIONS = ("error", "dlq", "approval")

RUN_ERRORS = (StoreError, LeaseLostError, NonDeterminismError, BudgetExceededError,
               ContextMisuseError)
"""Errors of the run, not of a member: never taken for a member's failure."""


@final
@dataclass(frozen=True, slots=True)
class Reply:
    """One member's answer (or failure), with what it cost.

    Attributes:
        member: the member's label (an agent's name, a function's ``__name__``; ``#i``
            added when one member is asked more than once).
        value: the answer (``None`` when it failed).
        error: ``"Type: message"`` when it failed, else ``None``.
        model: ``provider:model`` that gave an agent's last answer (``None`` for a
            function).
        calls: model turns (an agent) or steps (a function) spent.
        tokens: tokens spent (input + output).
    """

    member: str
    value: Any
    error: str | None = None
    model: str | None = None
    calls: int = 0
    tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def labels(members: Sequence[Any], what: str) -> list[str]:
    """Each member's label; a :class:`ConfigurationError` for something that is not a
    member."""
    names = []
    for m in members:
        if isinstance(m, Agent):
            names.append(m.name)
        elif callable(m):
            names.append(str(getattr(m, "__name__", None) or type(m).__name__))
        else:
            raise ConfigurationError(f"{what} must be agents or functions, not {m!r}")
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if counts[n] == 1:
            out.append(n)
            continue
        seen[n] = seen.get(n, 0) + 1
        out.append(f"{n}#{seen[n]}")
    return out


async def ask(ctx: Context, member: Any, label: str, payload: Any, prompt: str, *,
              pattern: str, output: TypeAdapter[Any] | None = None,
              catch: bool = True,
              fan_in: tuple[str, Mapping[str, str]] | None = None) -> Reply:
    """Ask one member: an agent with ``prompt``, a function with ``payload`` (one
    journaled step named ``{pattern}:{label}``). ``output`` validates the answer (a
    string is read as JSON when the type is not ``str``): an answer that does not fit is
    a failure of the member. With ``catch`` a member's failure is returned as a
    :class:`Reply` with ``error``; without, it is raised.

    ``fan_in`` is ``(task, answers by member)``, the same question with the other
    members' answers apart: an agent with a context window is asked ``task`` with each
    answer as its own unpinned message (a fan-in, see :func:`~stalwart.fan_in`), so its
    window policy can evict or summarize them before the call instead of refusing a
    pinned prompt. An agent without a window, or a function, is asked as before
    (``prompt``, which holds the answers), so its journal replays unchanged."""
    try:
        if isinstance(member, Agent):
            if fan_in is not None and member.context is not None:
                result = await member.run_result(ctx, fan_in[0], results=fan_in[1])
            else:
                result = await member.run_result(ctx, prompt)
            reply = Reply(label, result.output,
                          model=result.models[-1] if result.models else None,
                          calls=result.iterations, tokens=result.usage.total_tokens)
        else:
            value = await ctx.step(member, payload, name=f"{pattern}:{label}")
            reply = Reply(label, value, calls=1)
        if output is not None:
            reply = Reply(label, validate(output, reply.value), model=reply.model,
                          calls=reply.calls, tokens=reply.tokens)
        return reply
    except RUN_ERRORS:
        raise
    except Exception as exc:
        if not catch:
            raise
        return Reply(label, None, error=f"{error_type_name(exc)}: {exc}"[:2000],
                     model=_model_of(member))


def _model_of(member: Any) -> str | None:
    if not isinstance(member, Agent):
        return None
    model = member.model
    if isinstance(model, str):
        return model
    return f"{getattr(model, 'provider', '?')}:{getattr(model, 'name', '?')}"


def validate(adapter: TypeAdapter[Any], value: Any) -> Any:
    """``value`` as the adapter's type; a text answer is read as JSON unless the type
    is ``str``. Raises :class:`ValueError` (pydantic's) when it does not fit."""
    if isinstance(value, str) and adapter.core_schema.get("type") != "str":
        try:
            return adapter.validate_json(value)
        except ValidationError:
            pass
    return adapter.validate_python(value)


def to_json(value: Any) -> Any:
    """A JSON value for ``value`` (a model as its data)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    try:
        return TypeAdapter(Any).dump_python(value, mode="json")
    except Exception:
        return str(value)


def canonical(value: Any) -> str:
    """The text two equal answers share: their JSON with sorted keys (a model as its
    data), so ``{"a": 1, "b": 2}`` and a model with those fields are one answer."""
    return json.dumps(to_json(value), sort_keys=True, separators=(",", ":"))


def check_escalate(how: str, where: str) -> None:
    if how not in ESCALATIONS:
        raise ConfigurationError(f"{where}: escalate must be one of "
                                 f"{', '.join(map(repr, ESCALATIONS))}, not {how!r}")


async def settle(ctx: Context, how: str, err: EnsembleError,
                 evidence: Mapping[str, Any]) -> None:
    """Escalate ``err`` as ``how``: return when a human approved going on
    (``"approval"``: ``ctx.approval`` named after the pattern, the evidence as its
    payload); raise otherwise (denied, or ``"error"``/``"dlq"``)."""
    if how == "approval":
        decision = await ctx.approval(f"{err.pattern}: {type(err).__name__}",
                                      {"error": str(err), **evidence})
        if decision.approved:
            return
        raise err
    raise escalation(how, err, evidence)


def escalation(how: str, err: EnsembleError, evidence: Mapping[str, Any]) -> BaseException:
    """What to raise for ``err`` escalated as ``how`` (``"error"``: ``err`` itself;
    ``"dlq"``: an :class:`EscalatedError` whose cause is ``err``)."""
    if how == "dlq":
        out = EscalatedError(f"{err.pattern} escalated to the dead-letter queue: {err}",
                             pattern=err.pattern, reason=f"{type(err).__name__}: {err}",
                             evidence=dict(evidence))
        out.__cause__ = err
        return out
    return err


def prompt_of(task: Any) -> str:
    """A task as text for an agent."""
    if isinstance(task, str):
        return task
    return json.dumps(to_json(task), indent=None)


@final
@dataclass(frozen=True, slots=True)
class Semantic:
    """A semantic failure: a member answered (HTTP 200), but wrong — it dissented from
    a vote's winner, its draft was rejected, its trial failed, its blackboard entry was
    refuted. Counted per agent and model like a 5xx (``stalwart stats``, metrics)."""

    member: str
    model: str | None
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"member": self.member, "model": self.model, "reason": self.reason[:500]}


SEMANTIC_ACTION = "semantic_failure"
"""The policy action a semantic failure is noted as (metrics and the policy log)."""


async def record(ctx: Context, name: str, info: Mapping[str, Any],
                 semantic: Sequence[Semantic] = (), *, breaker: bool = False,
                 notes: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Journal what a pattern decided as a step named ``name`` whose result is ``info``
    plus its ``semantic`` failures; the failures are noted to the runtime's metrics when
    the step runs (once: a replay returns the record without running it) and, with
    ``breaker``, counted against the circuit breaker of each failing model (an answer
    that keeps being wrong takes its model out of rotation like one that times out);
    ``notes`` are other ``(action, key)`` policy notes for the metrics."""
    engine, run_id = ctx.execution.engine, ctx.run_id
    payload = {**info, "semantic": [s.as_json() for s in semantic]}

    async def decided(info: dict[str, Any]) -> dict[str, Any]:
        step_id = current_step().step_id
        for s in semantic:
            engine.note_policy(run_id, step_id, SEMANTIC_ACTION, s.model or s.member)
            if breaker and s.model:
                engine.breakers.get(s.model).on_late_failure()
        for action, key in notes:
            engine.note_policy(run_id, step_id, action, key)
        return info

    return await ctx.step(decided, payload, name=name)

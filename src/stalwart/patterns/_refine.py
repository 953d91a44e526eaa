"""Generator-critic: ``await sw.refine(ctx, generator, critic, task, max_rounds=N)``.

The generator drafts; the critic returns a structured :class:`Verdict` (accept, or
revise with reasons); a rejected draft goes back to the generator with the reasons, for
at most ``max_rounds`` drafts (and, with ``within=``, no new round after that many
seconds of the run's journaled clock). ``accept=`` decides from the verdict (default:
``verdict.accept``), e.g. ``lambda v: (v.score or 0) >= 0.8``.

Every draft and critique is journaled (the members' model turns or steps
``refine:NAME``) and so is each round's outcome (the step ``refine:round:K``: the draft,
the verdict, whether it was accepted; a rejected draft is a semantic failure of the
generator's model), so a resumed loop asks nobody twice and ``stalwart runs show`` and
the trace show the whole history. When no draft is accepted:
:class:`~stalwart.errors.RefinementExhaustedError` with the history (``escalate="dlq"``:
the run waits in the dead-letter queue with it), or, with ``on_exhausted="return"``, the
last draft with ``accepted=False``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, final

from pydantic import BaseModel, TypeAdapter

from ..errors import ConfigurationError, RefinementExhaustedError
from ._members import (
    Escalate,
    Semantic,
    ask,
    canonical,
    check_escalate,
    labels,
    prompt_of,
    record,
    settle,
    to_json,
)
from ._semantic import spend_retry, watch

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["CritiqueInput", "RefineInput", "RefineResult", "Round", "Verdict", "refine"]

T = TypeVar("T")


@final
class Verdict(BaseModel):
    """A critic's verdict on a draft.

    Attributes:
        accept: the draft is good as it is.
        reasons: what to change (for a revision), or why it is good.
        score: an optional grade (e.g. 0-1) for ``accept=`` to use.
    """

    accept: bool
    reasons: list[str] = []
    score: float | None = None


@final
class RefineInput(BaseModel):
    """What a function generator is given (an agent gets :meth:`prompt`).

    Attributes:
        task: the task.
        round: this draft's round, from 1.
        draft: the previous draft (``None`` in round 1).
        reasons: the critic's reasons to revise it (empty in round 1).
    """

    task: Any
    round: int
    draft: Any = None
    reasons: list[str] = []

    def prompt(self) -> str:
        text = prompt_of(self.task)
        if self.round == 1:
            return text
        why = "\n".join(f"- {r}" for r in self.reasons) or "- (no reasons given)"
        return (f"{text}\n\nYour previous draft:\n{prompt_of(self.draft)}\n\nA reviewer "
                f"asked for a revision:\n{why}\n\nWrite the revised draft.")


@final
class CritiqueInput(BaseModel):
    """What a function critic is given (an agent gets :meth:`prompt`)."""

    task: Any
    round: int
    draft: Any

    def prompt(self) -> str:
        return (f"Task:\n{prompt_of(self.task)}\n\nDraft:\n{prompt_of(self.draft)}\n\n"
                "Review the draft. Accept it if it does the task well; otherwise give "
                "the reasons it must be revised.")


@final
@dataclass(frozen=True, slots=True)
class Round:
    """One round: a draft and its critique."""

    round: int
    draft: Any
    verdict: Verdict
    accepted: bool


@final
@dataclass(frozen=True, slots=True)
class RefineResult(Generic[T]):
    """A refinement's outcome.

    Attributes:
        output: the accepted draft (the last one when none was and
            ``on_exhausted="return"``).
        accepted: whether the critic accepted it.
        rounds: the rounds made.
        history: every draft with its critique, in order.
        calls: model turns and function steps spent (generator and critic).
        tokens: tokens spent.
    """

    output: T
    accepted: bool
    rounds: int
    history: tuple[Round, ...]
    calls: int
    tokens: int


def check_bounds(where: str, name: str, value: int, within: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{where}: {name} must be an int >= 1, not {value!r}")
    if within is not None and (isinstance(within, bool) or not isinstance(
            within, int | float) or not 0 < within < math.inf):
        raise ConfigurationError(f"{where}: within must be a positive, finite number of "
                                 f"seconds, not {within!r}")


async def refine(ctx: Context, generator: Any, critic: Any, task: Any, *,
                 max_rounds: int = 3, accept: Callable[[Verdict], bool] | None = None,
                 within: float | None = None, output_type: type[T] | None = None,
                 on_exhausted: Literal["escalate", "return"] = "escalate",
                 escalate: Escalate = "error", breaker: bool = False) -> RefineResult[T]:
    """Draft, critique and revise until the critic accepts (at most ``max_rounds``).

    Args:
        generator: an agent, or a function of a :class:`RefineInput`, that drafts.
        critic: an agent (best with ``output_type=Verdict``), or a function of a
            :class:`CritiqueInput`, that returns a :class:`Verdict` (or its JSON).
        task: the task.
        max_rounds: the most drafts.
        accept: whether a verdict accepts its draft (default ``verdict.accept``).
        within: no new round starts this many seconds (journaled clock) after the first.
        output_type: each draft is validated as this type.
        on_exhausted: ``"escalate"`` (raise, as ``escalate`` says) or ``"return"`` the
            last draft, ``accepted=False``.
        escalate: ``"error"``, ``"dlq"``, or ``"approval"`` (a human decides on the
            history; approved, the last draft is returned, ``accepted=True``).
        breaker: count each rejected draft against the generator's model's circuit
            breaker.

    Raises:
        ConfigurationError: bad bounds, members or options (nothing asked).
        RefinementExhaustedError: no draft accepted within the bounds.
        BudgetExceededError: a round past the run's semantic retry budget
            (:func:`~stalwart.patterns.limit_semantic_retries`).
        Whatever the generator or critic raised: a member that fails ends the loop.
    """
    check_bounds("refine()", "max_rounds", max_rounds, within)
    gen_name, critic_name = labels([generator, critic], "refine(): generator and critic")
    if on_exhausted not in ("escalate", "return"):
        raise ConfigurationError(f"refine(): on_exhausted must be 'escalate' or 'return', "
                                 f"not {on_exhausted!r}")
    check_escalate(escalate, "refine()")
    judge = accept or (lambda v: v.accept)
    drafts = TypeAdapter(output_type) if output_type is not None else None
    verdicts = TypeAdapter(Verdict)
    history: list[Round] = []
    calls = tokens = 0
    start = await ctx.now() if within is not None else 0.0
    draft: Any = None
    reasons: list[str] = []
    for n in range(1, max_rounds + 1):
        if within is not None and n > 1 and await ctx.now() - start >= within:
            break
        if n > 1:
            spend_retry(ctx, f"refine round {n} of {gen_name!r}")
        given = RefineInput(task=task, round=n, draft=draft, reasons=reasons)
        made = await ask(ctx, generator, gen_name, given, given.prompt(), pattern="refine",
                         output=drafts, catch=False)
        draft = made.value
        seen = CritiqueInput(task=task, round=n, draft=to_json(draft))
        judged = await ask(ctx, critic, critic_name, seen, seen.prompt(),
                           pattern="refine", output=verdicts, catch=False)
        verdict: Verdict = judged.value
        ok = bool(judge(verdict))
        calls += made.calls + judged.calls
        tokens += made.tokens + judged.tokens
        history.append(Round(n, draft, verdict, ok))
        semantic = [] if ok else [Semantic(gen_name, made.model, "; ".join(verdict.reasons)
                                           or "draft rejected by the critic")]
        await record(ctx, f"refine:round:{n}", {
            "round": n, "draft": to_json(draft), "verdict": verdict.model_dump(mode="json"),
            "accepted": ok, "critic": critic_name,
            "tokens": made.tokens + judged.tokens}, semantic, breaker=breaker)
        if ok:
            return RefineResult(draft, True, n, tuple(history), calls, tokens)
        await watch(ctx, f"refine {gen_name}", [canonical(r.draft) for r in history])
        reasons = list(verdict.reasons)
    if on_exhausted == "return" and history:
        return RefineResult(draft, False, len(history), tuple(history), calls, tokens)
    story = [{"round": r.round, "draft": to_json(r.draft),
              "verdict": r.verdict.model_dump(mode="json")} for r in history]
    err = RefinementExhaustedError(
        f"refine: the critic {critic_name!r} accepted none of {len(history)} drafts of "
        f"{gen_name!r} (max_rounds={max_rounds}"
        f"{f', within={within:g}s' if within is not None else ''})",
        rounds=len(history), history=story, run_id=ctx.run_id)
    await settle(ctx, escalate, err, {"rounds": len(history), "history": story})
    # a human approved the last draft (escalate="approval")
    return RefineResult(draft, True, len(history), tuple(history), calls, tokens)

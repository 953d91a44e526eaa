"""Reflexion: ``await sw.reflexion(ctx, actor, evaluator, task, max_trials=N)``.

Shinn et al. (2023): an actor tries the task; an evaluator judges the trial
(:class:`Evaluation`: success, feedback); after a failed trial a *reflection* — what went
wrong and what to do differently — is written to an episodic memory that the next trial
sees. The reflection is the reflector's (an agent or function of a
:class:`ReflectionInput`), or, without one, the evaluator's feedback.

The memory is journaled: each trial's answer and evaluation (the members' model turns or
steps ``reflexion:NAME``) and the memory after it (the step ``reflexion:trial:K``: the
answer, the evaluation, the reflection and the whole memory; a failed trial is a
semantic failure of the actor's model), so a resumed run remembers without asking
anyone again, and the journal shows how the actor learned. Bounded by ``max_trials``
(and ``within=`` seconds of the journaled clock); exhausted, it raises
:class:`~stalwart.errors.ReflexionExhaustedError` with every trial and reflection, or
(``escalate="dlq"``) dead-letters the run with them for a human.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

from pydantic import BaseModel, TypeAdapter

from ..errors import ReflexionExhaustedError
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
from ._refine import check_bounds
from ._semantic import spend_retry, watch

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["Evaluation", "EvaluationInput", "ReflectionInput", "ReflexionResult", "Trial",
           "TrialInput", "reflexion"]

T = TypeVar("T")


@final
class Evaluation(BaseModel):
    """An evaluator's judgement of a trial.

    Attributes:
        success: the trial did the task.
        feedback: what was wrong (or right), in words.
        score: an optional grade.
    """

    success: bool
    feedback: str = ""
    score: float | None = None


@final
class TrialInput(BaseModel):
    """What a function actor is given (an agent gets :meth:`prompt`)."""

    task: Any
    trial: int
    memory: list[str] = []

    def prompt(self) -> str:
        text = prompt_of(self.task)
        if not self.memory:
            return text
        notes = "\n".join(f"- {m}" for m in self.memory)
        return (f"{text}\n\nLessons from your earlier attempts (do not repeat their "
                f"mistakes):\n{notes}")


@final
class EvaluationInput(BaseModel):
    """What a function evaluator is given (an agent gets :meth:`prompt`)."""

    task: Any
    trial: int
    answer: Any

    def prompt(self) -> str:
        return (f"Task:\n{prompt_of(self.task)}\n\nAnswer:\n{prompt_of(self.answer)}\n\n"
                "Does the answer do the task? Give feedback.")


@final
class ReflectionInput(BaseModel):
    """What a function reflector is given (an agent gets :meth:`prompt`)."""

    task: Any
    trial: int
    answer: Any
    evaluation: Evaluation
    memory: list[str] = []

    def prompt(self) -> str:
        return (f"Task:\n{prompt_of(self.task)}\n\nYour answer:\n{prompt_of(self.answer)}"
                f"\n\nIt failed: {self.evaluation.feedback}\n\nIn two sentences: what went "
                "wrong, and what will you do differently next time?")


@final
@dataclass(frozen=True, slots=True)
class Trial:
    """One trial: the answer, its evaluation, and the reflection written after it
    (``None`` for a successful trial)."""

    trial: int
    answer: Any
    evaluation: Evaluation
    reflection: str | None


@final
@dataclass(frozen=True, slots=True)
class ReflexionResult(Generic[T]):
    """A successful Reflexion loop.

    Attributes:
        output: the answer that passed the evaluator.
        trials: every trial, the successful one last.
        memory: the reflections written (one per failed trial).
        calls: model turns and function steps spent (actor, evaluator, reflector).
        tokens: tokens spent.
    """

    output: T
    trials: tuple[Trial, ...]
    memory: tuple[str, ...]
    calls: int
    tokens: int


async def reflexion(ctx: Context, actor: Any, evaluator: Any, task: Any, *,
                    max_trials: int = 3, reflector: Any = None,
                    within: float | None = None, output_type: type[T] | None = None,
                    escalate: Escalate = "error",
                    breaker: bool = False) -> ReflexionResult[T]:
    """Try, evaluate, reflect and try again with the reflections in memory.

    Args:
        actor: an agent, or a function of a :class:`TrialInput`.
        evaluator: an agent (best with ``output_type=Evaluation``), or a function of an
            :class:`EvaluationInput`, returning an :class:`Evaluation`.
        task: the task.
        max_trials: the most trials.
        reflector: an agent or a function of a :class:`ReflectionInput` that writes the
            reflection (text); default: the evaluator's feedback.
        within: no new trial starts this many seconds (journaled clock) after the first.
        output_type: each answer is validated as this type.
        escalate: ``"error"``, ``"dlq"``, or ``"approval"`` when every trial failed (a
            human decides on the trials; approved, the last answer is returned).
        breaker: count each failed trial against the actor's model's circuit breaker.

    Raises:
        ConfigurationError: bad bounds or members (nothing asked).
        ReflexionExhaustedError: no trial passed (with every trial and reflection).
        BudgetExceededError: a trial past the run's semantic retry budget
            (:func:`~stalwart.patterns.limit_semantic_retries`).
    """
    check_bounds("reflexion()", "max_trials", max_trials, within)
    members = [actor, evaluator] + ([reflector] if reflector is not None else [])
    names = labels(members, "reflexion(): actor, evaluator and reflector")
    check_escalate(escalate, "reflexion()")
    answers = TypeAdapter(output_type) if output_type is not None else None
    evaluations = TypeAdapter(Evaluation)
    memory: list[str] = []
    trials: list[Trial] = []
    calls = tokens = 0
    start = await ctx.now() if within is not None else 0.0
    for n in range(1, max_trials + 1):
        if within is not None and n > 1 and await ctx.now() - start >= within:
            break
        if n > 1:
            spend_retry(ctx, f"reflexion trial {n} of {names[0]!r}")
        given = TrialInput(task=task, trial=n, memory=list(memory))
        tried = await ask(ctx, actor, names[0], given, given.prompt(), pattern="reflexion",
                          output=answers, catch=False)
        seen = EvaluationInput(task=task, trial=n, answer=to_json(tried.value))
        judged = await ask(ctx, evaluator, names[1], seen, seen.prompt(),
                           pattern="reflexion", output=evaluations, catch=False)
        evaluation: Evaluation = judged.value
        calls += tried.calls + judged.calls
        tokens += tried.tokens + judged.tokens
        reflection: str | None = None
        if not evaluation.success:
            if reflector is None:
                reflection = f"trial {n}: {evaluation.feedback or 'failed'}"
            else:
                asked = ReflectionInput(task=task, trial=n, answer=to_json(tried.value),
                                        evaluation=evaluation, memory=list(memory))
                wrote = await ask(ctx, reflector, names[2], asked, asked.prompt(),
                                  pattern="reflexion", output=TypeAdapter(str), catch=False)
                reflection = str(wrote.value)
                calls, tokens = calls + wrote.calls, tokens + wrote.tokens
            memory.append(reflection)
        trials.append(Trial(n, tried.value, evaluation, reflection))
        semantic = [] if evaluation.success else [
            Semantic(names[0], tried.model, evaluation.feedback or "trial failed")]
        await record(ctx, f"reflexion:trial:{n}", {
            "trial": n, "answer": to_json(tried.value),
            "evaluation": evaluation.model_dump(mode="json"), "reflection": reflection,
            "memory": list(memory), "tokens": tried.tokens + judged.tokens},
            semantic, breaker=breaker)
        if evaluation.success:
            return ReflexionResult(tried.value, tuple(trials), tuple(memory), calls, tokens)
        await watch(ctx, f"reflexion {names[0]}", [canonical(t.answer) for t in trials])
    story = [{"trial": t.trial, "answer": to_json(t.answer),
              "evaluation": t.evaluation.model_dump(mode="json"),
              "reflection": t.reflection} for t in trials]
    err = ReflexionExhaustedError(
        f"reflexion: {names[0]!r} failed all {len(trials)} trials (max_trials="
        f"{max_trials}); last feedback: {trials[-1].evaluation.feedback or '-'}",
        trials=story, run_id=ctx.run_id)
    await settle(ctx, escalate, err, {"trials": story})
    # a human approved the last answer (escalate="approval")
    return ReflexionResult(trials[-1].answer, tuple(trials), tuple(memory), calls, tokens)

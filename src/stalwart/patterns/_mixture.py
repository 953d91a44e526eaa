"""Mixture-of-Agents: ``await sw.mixture(ctx, proposers, aggregator, task, layers=N)``.

Wang et al. (2024): a layer of proposers answers the task; each later layer answers
again, seeing the previous layer's answers; at the end one answer is made of the last
layer's, as ``strategy`` says:

* ``"synthesize"``: the aggregator (an agent or a function) is asked the task with the
  last layer's answers and writes the answer;
* ``"vote"``: the most common of the last layer's answers (canonical JSON), ties to the
  first proposer's; no aggregator call;
* ``"weighted"``: as ``"vote"``, each proposer's answer counting its ``weights[i]``.

The result carries the **divergence** of the last layer's answers (see
:mod:`stalwart.patterns._divergence`: for structured answers the share of fields on
which proposers disagree; for text the mean pairwise normalised token-set distance).
``escalate_above=x`` turns a divergence over ``x`` into an escalation before the
aggregation (:class:`~stalwart.errors.DivergenceError`, or the dead-letter queue with
``escalate="dlq"``): proposers that disagree that much are evidence the answer is not
to be trusted.

Each layer is a ``ctx.gather`` of the proposers (their model turns, or a function's
step ``mixture:NAME``, journaled), each layer's answers and divergence a step
``mixture:layer:K``, the aggregation ``mixture:aggregate``: a crash never re-asks a
proposer that answered, and the journal shows every layer. A proposer that fails is
left out of its layer (the journal says why); a layer in which all fail raises
:class:`~stalwart.errors.EnsembleError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, final

from pydantic import BaseModel, TypeAdapter

from ..errors import ConfigurationError, DivergenceError, EnsembleError
from ._divergence import divergence as measure
from ._members import (
    Escalate,
    Reply,
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

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["MixtureInput", "MixtureResult", "Strategy", "mixture"]

T = TypeVar("T")
Strategy = Literal["synthesize", "vote", "weighted"]
_STRATEGIES = ("synthesize", "vote", "weighted")


@final
class MixtureInput(BaseModel):
    """What a function proposer or aggregator of a mixture is given (an agent gets
    :meth:`prompt`).

    Attributes:
        task: the task, as given to ``mixture``.
        layer: 1 for the first layer of proposers; ``layers + 1`` for the aggregator.
        previous: the previous layer's answers (empty in the first layer).
    """

    task: Any
    layer: int
    previous: list[Any] = []

    def prompt(self) -> str:
        """The text an agent is asked (the previous answers in it)."""
        text = prompt_of(self.task)
        if not self.previous:
            return text
        answers = "\n".join(f"{i}. {prompt_of(a)}" for i, a in enumerate(self.previous, 1))
        return (f"{text}\n\nAnswers to build on:\n{answers}\n\n{_BUILD_ON}")

    def fan_in_prompt(self) -> str:
        """The text an agent with a context window is asked: the task alone, the
        previous answers following it as messages of their own (a fan-in)."""
        return (f"{prompt_of(self.task)}\n\nThe answers to build on follow, one message "
                f"each. {_BUILD_ON}")


_BUILD_ON = ("Write one answer, better than each: keep what they agree on, resolve what "
             "they do not.")


@final
@dataclass(frozen=True, slots=True)
class MixtureResult(Generic[T]):
    """A mixture's answer and how it was made.

    Attributes:
        output: the answer.
        divergence: the divergence of the last layer's answers (0 = all agree).
        divergences: each layer's divergence, in order.
        layers: each layer's replies, in order (answers and failures, with their
            models, calls and tokens).
        calls: model turns and function steps spent, aggregator included.
        tokens: tokens spent, aggregator included.
    """

    output: T
    divergence: float
    divergences: tuple[float, ...]
    layers: tuple[tuple[Reply, ...], ...] = field(repr=False)
    calls: int
    tokens: int


def _check(proposers: Sequence[Any], aggregator: Any, layers: int, strategy: str,
           weights: Sequence[float] | None, escalate_above: float | None,
           escalate: str) -> list[str]:
    if not proposers:
        raise ConfigurationError("mixture() needs at least one proposer")
    names = labels(proposers, "mixture(): proposers")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ConfigurationError(f"mixture(): layers must be an int >= 1, not {layers!r}")
    if strategy not in _STRATEGIES:
        raise ConfigurationError(f"mixture(): unknown strategy {strategy!r}; use one of "
                                 f"{', '.join(_STRATEGIES)}")
    if strategy == "synthesize":
        if aggregator is None:
            raise ConfigurationError("mixture(strategy='synthesize') needs an aggregator")
        labels([aggregator], "mixture(): the aggregator")
    if strategy == "weighted":
        if weights is None or len(weights) != len(proposers):
            raise ConfigurationError("mixture(strategy='weighted') needs one weight per "
                                     f"proposer ({len(proposers)})")
        if any(not isinstance(w, int | float) or isinstance(w, bool) or not 0 <= w < math.inf
               for w in weights):
            raise ConfigurationError("mixture(): weights must be finite numbers >= 0")
    elif weights is not None:
        raise ConfigurationError("mixture(): weights are for strategy='weighted'")
    if escalate_above is not None and (isinstance(escalate_above, bool) or not isinstance(
            escalate_above, int | float) or not 0 <= escalate_above <= 1):
        raise ConfigurationError(f"mixture(): escalate_above must be a number in [0, 1], "
                                 f"not {escalate_above!r}")
    check_escalate(escalate, "mixture()")
    return names


async def mixture(ctx: Context, proposers: Sequence[Any], aggregator: Any, task: Any, *,
                  layers: int = 1, strategy: Strategy = "synthesize",
                  weights: Sequence[float] | None = None,
                  output_type: type[T] | None = None,
                  escalate_above: float | None = None,
                  escalate: Escalate = "error", breaker: bool = False) -> MixtureResult[T]:
    """Ask layers of proposers, then make one answer of the last layer's.

    Args:
        proposers: agents or functions of a :class:`MixtureInput`, asked in every layer.
        aggregator: the agent or function that synthesizes the answer
            (``strategy="synthesize"``; may be ``None`` otherwise).
        task: the task.
        layers: how many layers of proposers (each after the first sees the previous
            layer's answers).
        strategy: ``"synthesize"``, ``"vote"`` or ``"weighted"`` (see the module).
        weights: one weight per proposer, for ``"weighted"``.
        output_type: each answer (the proposers' and the aggregator's) is validated as
            this type (text read as JSON); a proposer's that does not fit is a failure.
        escalate_above: escalate when the last layer's divergence is above this.
        escalate: ``"error"`` (:class:`~stalwart.errors.DivergenceError`), ``"dlq"``,
            or ``"approval"`` (a human decides; approved, the aggregation goes on).
        breaker: with ``"vote"``/``"weighted"``, count each proposer whose last answer
            lost against its model's circuit breaker.

    Raises:
        ConfigurationError: zero proposers, a bad ``layers``/``strategy``/``weights``/
            ``escalate_above``, no aggregator to synthesize with (nothing is asked).
        DivergenceError: the proposers diverged above ``escalate_above``.
        EnsembleError: every proposer of a layer failed.
    """
    names = _check(proposers, aggregator, layers, strategy, weights, escalate_above,
                   escalate)
    adapter = TypeAdapter(output_type) if output_type is not None else None
    previous: list[Any] = []
    by_member: dict[str, str] = {}  # the previous answers, as a fan-in's results
    done: list[tuple[Reply, ...]] = []
    divergences: list[float] = []
    for layer in range(1, layers + 1):
        given = MixtureInput(task=task, layer=layer, previous=previous)
        fan = (given.fan_in_prompt(), by_member) if previous else None
        replies: tuple[Reply, ...] = tuple(await ctx.gather(*(
            ask(ctx, p, label, given, given.prompt(), pattern="mixture", output=adapter,
                fan_in=fan)
            for p, label in zip(proposers, names, strict=True))))
        answers = [r.value for r in replies if r.ok]
        div = measure(answers)
        await record(ctx, f"mixture:layer:{layer}", {
            "layer": layer, "divergence": div,
            "answers": {r.member: to_json(r.value) for r in replies if r.ok},
            "failed": {r.member: r.error for r in replies if not r.ok}})
        done.append(replies)
        divergences.append(div)
        if not answers:
            raise EnsembleError(
                f"mixture: every proposer of layer {layer} failed: "
                f"{'; '.join(f'{r.member}: {r.error}' for r in replies)}",
                pattern="mixture", run_id=ctx.run_id)
        previous = answers
        by_member = {r.member: prompt_of(r.value) for r in replies if r.ok}
    last = done[-1]
    calls = sum(r.calls for layer_ in done for r in layer_)
    tokens = sum(r.tokens for layer_ in done for r in layer_)
    div = divergences[-1]
    if escalate_above is not None and div > escalate_above:
        answers_json = {r.member: to_json(r.value) for r in last if r.ok}
        await record(ctx, "mixture:escalated", {
            "divergence": div, "threshold": escalate_above, "answers": answers_json,
            "escalate": escalate})
        err = DivergenceError(
            f"mixture: the proposers diverged by {div:.3f}, above escalate_above="
            f"{escalate_above:g}", divergence=div, threshold=float(escalate_above),
            answers=answers_json, run_id=ctx.run_id)
        # approved by a human (escalate="approval"): aggregate all the same
        await settle(ctx, escalate, err, {"divergence": div, "threshold": escalate_above,
                                          "answers": answers_json})
    if strategy == "synthesize":
        given = MixtureInput(task=task, layer=layers + 1, previous=previous)
        reply = await ask(ctx, aggregator, labels([aggregator], "aggregator")[0], given,
                          given.prompt(), pattern="mixture", output=adapter, catch=False,
                          fan_in=(given.fan_in_prompt(), by_member))
        output, calls, tokens = reply.value, calls + reply.calls, tokens + reply.tokens
        dissent: list[Semantic] = []
    else:
        w = list(weights) if strategy == "weighted" and weights is not None else [1.0] * len(last)
        output = _plurality(last, w)
        chosen = canonical(output)
        dissent = [Semantic(r.member, r.model, f"proposed {canonical(r.value)[:200]}, not "
                            f"the {strategy} winner") for r in last
                   if r.ok and canonical(r.value) != chosen]
    await record(ctx, "mixture:aggregate", {"strategy": strategy, "divergence": div,
                                            "output": to_json(output)}, dissent,
                 breaker=breaker)
    return MixtureResult(output=output, divergence=div, divergences=tuple(divergences),
                         layers=tuple(done), calls=calls, tokens=tokens)


def _plurality(replies: Sequence[Reply], weights: Sequence[float]) -> Any:
    """The answer with the most weight (ties: the first proposer's)."""
    score: dict[str, list[Any]] = {}
    for r, w in zip(replies, weights, strict=True):
        if r.ok:
            score.setdefault(canonical(r.value), [0.0, r.value])[0] += w
    best = max(score.values(), key=lambda v: v[0])  # max keeps the first of equals
    return best[1]

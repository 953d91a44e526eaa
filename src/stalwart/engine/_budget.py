"""Budgets: the outermost layer of the policy stack.

A :class:`Budget` bounds what a run spends — tokens, dollars, model and tool calls,
wall-clock seconds — at three levels: the runtime's (every run), the workflow's (every
run of it) and an agent's (one ``agent.run``). Before each model or tool call the
engine checks every budget in force; a call that would start with a limit already
reached is not made, and the step fails with
:class:`~stalwart.errors.BudgetExceededError`, journaled with which budget, its limit
and how much was used. Since usage is only known after a call, a run ends at most one
call over a token or cost limit (per concurrent ``gather`` branch).

Replay-safe: a run's totals are rebuilt from its journal (the usage recorded in each
model turn), so a resumed run neither forgets what it spent nor counts it twice; an
agent's totals are rebuilt as its loop replays its recorded turns. ``max_seconds``
counts from the run's creation time in the journal, at every level.

Dividing a budget among sub-agents: :meth:`Budget.split` gives each part its weight's
share of the tokens, dollars and calls (of what remains, given what was ``used``);
``max_seconds`` is a deadline, not an amount, so every part keeps it whole. Run a
sub-agent with its share (``agent.run(ctx, task, budget=share)``): its calls count
against its share *and* against every budget above it, so the parent's total still
bounds the sum. :meth:`~stalwart.Context.split_budget` splits what remains of the
budgets in force where it is called, as a journaled step (a replay gets the same
shares).
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from fractions import Fraction
from typing import Any, final, overload

from .._clock import Clock
from ..errors import BudgetExceededError, ConfigurationError
from ..models import ModelResponse
from ..store._base import Event
from ._cost import PriceTable, call_usages

__all__ = ["Budget", "RunBudget", "Spend", "agent_budget", "limits_of", "weights_of"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """Limits on what a run (or one agent run) may spend; ``None`` means no limit.

    Args:
        max_tokens: input plus output tokens over all model turns.
        max_cost: US dollars, priced with the runtime's price table. A model with no
            price cannot be held to it: calling one under ``max_cost`` fails with
            :class:`~stalwart.errors.ConfigurationError` (an unknown cost is not zero).
        max_steps: model turns plus tool calls.
        max_seconds: wall-clock seconds since the run was created (or a timedelta).
    """

    max_tokens: int | None = None
    max_cost: float | None = None
    max_steps: int | None = None
    max_seconds: float | timedelta | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_seconds, timedelta):
            object.__setattr__(self, "max_seconds", self.max_seconds.total_seconds())
        for name in ("max_tokens", "max_steps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigurationError(f"Budget.{name} must be an int >= 1 or None")
        for name in ("max_cost", "max_seconds"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                                  or not 0 < v < math.inf):
                raise ConfigurationError(
                    f"Budget.{name} must be a positive, finite number or None (None is no "
                    "limit)")

    @property
    def seconds(self) -> float | None:
        """``max_seconds`` as a float."""
        s = self.max_seconds
        return s.total_seconds() if isinstance(s, timedelta) else s

    @overload
    def split(self, weights: Mapping[str, float], *,
              used: Spend | None = None) -> dict[str, Budget]: ...

    @overload
    def split(self, weights: Sequence[float], *, used: Spend | None = None) -> list[Budget]: ...

    def split(self, weights: Mapping[str, float] | Sequence[float], *,
              used: Spend | None = None) -> dict[str, Budget] | list[Budget]:
        """Divide this budget among parts by weight: ``{"researcher": 2, "critic": 1}``
        gives the researcher two thirds of the tokens, dollars and calls (a mapping gives
        a dict by the same keys, a sequence a list in order).

        ``max_tokens`` and ``max_steps`` are floor-divided, so the parts never sum above
        the whole: the remainder (less than one unit a part) is not given to any part and
        stays with the parent. ``max_cost`` is divided exactly, each share rounded down.
        ``max_seconds`` is a deadline, not an amount: every part keeps it whole. With
        ``used`` (what the parent spent already: a :class:`Spend`), what remains is
        divided. A limit of ``None`` stays ``None`` in every part.

        Raises:
            ConfigurationError: no weights, or a weight that is not a positive, finite
                number; ``used`` holds unpriced calls under ``max_cost`` (what remains
                of it is unknown).
            BudgetExceededError: nothing remains of a limit (``level="split"``), or a
                part's share of it would be zero (a part that could make no call).
        """
        labels, ws = weights_of(weights)
        used = used or Spend()
        total = sum(ws, Fraction(0))
        shares: dict[str, list[Any]] = {}
        for name, limit, spent in (("max_tokens", self.max_tokens, used.tokens),
                                   ("max_steps", self.max_steps, used.calls),
                                   ("max_cost", self.max_cost, used.cost)):
            if limit is None:
                continue
            if name == "max_cost" and used.unpriced:
                raise ConfigurationError(
                    f"Budget.split: max_cost={limit:g} cannot be divided: {used.unpriced} "
                    "of the calls already made had no price, so what remains is unknown")
            left = Fraction(limit) - Fraction(spent)
            if left <= 0:
                raise BudgetExceededError(
                    f"Budget.split: nothing remains of {name}={limit:g} to divide "
                    f"({spent:g} used)", budget=name, level="split", limit=float(limit),
                    used=float(spent))
            parts = [_share(left * w / total, integer=name != "max_cost") for w in ws]
            for label, w, part in zip(labels, ws, parts, strict=True):
                if part <= 0:
                    raise BudgetExceededError(
                        f"Budget.split: {name}: {float(left):g} left cannot give part "
                        f"{label} (weight {float(w):g} of {float(total):g}) any of it",
                        budget=name, level="split", limit=float(limit), used=float(spent))
            shares[name] = parts
        budgets = [replace(self, **{name: parts[i] for name, parts in shares.items()})
                   for i in range(len(ws))]
        if isinstance(weights, Mapping):
            return dict(zip(weights, budgets, strict=True))
        return budgets

    def left(self, used: Spend) -> Budget:
        """What remains of this budget once ``used`` is spent (``max_seconds`` kept: it
        is a deadline counted from the run's creation).

        Raises:
            BudgetExceededError: nothing remains of a limit (``level="split"``).
            ConfigurationError: ``max_cost`` is set and ``used`` holds unpriced calls.
        """
        (whole,) = self.split([1], used=used)
        return whole


def weights_of(weights: object) -> tuple[list[str], list[Fraction]]:
    """The parts' labels and weights (exact), or ConfigurationError."""
    if isinstance(weights, Mapping):
        items = [(str(k), v) for k, v in weights.items()]
    elif isinstance(weights, Sequence) and not isinstance(weights, str | bytes):
        items = [(f"#{i}", v) for i, v in enumerate(weights)]
    else:
        raise ConfigurationError("Budget.split: weights must be a mapping of names to "
                                 f"numbers or a sequence of numbers, not {weights!r}")
    if not items:
        raise ConfigurationError("Budget.split: no weights (nothing to divide among)")
    out: list[Fraction] = []
    for label, w in items:
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 < w < math.inf:
            raise ConfigurationError(f"Budget.split: the weight of {label} must be a "
                                     f"positive, finite number, not {w!r}")
        out.append(Fraction(w))
    return [label for label, _ in items], out


def limits_of(budget: Budget) -> dict[str, Any]:
    """``budget``'s limits as JSON (what a journaled split records)."""
    return {"max_tokens": budget.max_tokens, "max_cost": budget.max_cost,
            "max_steps": budget.max_steps, "max_seconds": budget.seconds}


def _share(exact: Fraction, *, integer: bool) -> Any:
    """``exact`` rounded down: an int, or the largest float not above it."""
    if integer:
        return math.floor(exact)
    f = float(exact)
    return math.nextafter(f, 0.0) if Fraction(f) > exact else f


@final
@dataclass(slots=True)
class Spend:
    """What has been spent: calls, tokens and the priced cost (``unpriced`` calls had no
    price, so ``cost`` is then a lower bound)."""

    calls: int = 0
    tokens: int = 0
    cost: float = 0.0
    unpriced: int = 0

    def add(self, tokens: int, cost: float | None) -> None:
        self.calls += 1
        self.tokens += tokens
        if cost is None:
            self.unpriced += 1
        else:
            self.cost += cost

    def plus(self, other: Spend) -> Spend:
        return Spend(self.calls + other.calls, self.tokens + other.tokens,
                     self.cost + other.cost, self.unpriced + other.unpriced)


@dataclass(slots=True)
class _AgentScope:
    name: str
    budget: Budget
    spend: Spend


_agent_scopes: contextvars.ContextVar[tuple[_AgentScope, ...]] = contextvars.ContextVar(
    "stalwart_agent_budgets", default=())


@contextmanager
def agent_budget(name: str, budget: Budget | None) -> Iterator[None]:
    """Hold one agent run to ``budget`` while the block runs (nothing when ``None``)."""
    if budget is None:
        yield
        return
    token = _agent_scopes.set((*_agent_scopes.get(), _AgentScope(name, budget, Spend())))
    try:
        yield
    finally:
        _agent_scopes.reset(token)


def spend_from_journal(events: Iterable[Event], prices: PriceTable) -> Spend:
    """The settled model and tool calls of a journal (a fork's reused ones excluded)."""
    out = Spend()
    for call in call_usages(events, prices):
        if call.settled and call.attempts and not call.reused:
            out.add(call.tokens, call.cost)
    return out


class RunBudget:
    """The budgets in force for one execution of a run, and what it has spent.

    Args:
        run_id, created_at: the run (``max_seconds`` counts from its creation).
        levels: the run-wide budgets in force, outermost first: ``("runtime", b)``,
            ``("workflow", b)``.
        prices: how calls are priced.
        clock: the runtime's clock.
        note: told ``(step_id, key)`` of each call a budget refuses (the policy log).
        events: the journal the execution started from (its spending so far).
    """

    __slots__ = ("_base", "_clock", "_events", "_note", "created_at", "live", "prices",
                 "run_id", "run_level")

    def __init__(self, *, run_id: str, created_at: float,
                 levels: Sequence[tuple[str, Budget]], prices: PriceTable, clock: Clock,
                 note: Callable[[str, str], None], events: list[Event]) -> None:
        self.run_id = run_id
        self.created_at = created_at
        self.run_level: tuple[tuple[str, Budget], ...] = tuple(levels)
        self.prices = prices
        self.live = Spend()
        self._clock = clock
        self._note = note
        self._events = events
        self._base: Spend | None = None

    @property
    def spent(self) -> Spend:
        """Everything this run has spent: the journal it started from, plus live calls."""
        if self._base is None:
            self._base = spend_from_journal(self._events, self.prices)
            self._events = []
        return self._base.plus(self.live)

    def check(self, step_id: str, key: str) -> None:
        """Refuse the call about to be made at ``step_id`` (to ``key``) if any budget in
        force is used up.

        Raises:
            BudgetExceededError: a limit is reached.
            ConfigurationError: ``max_cost`` is set and ``key``'s model has no price.
        """
        scopes = _agent_scopes.get()
        if not self.run_level and not scopes:
            return
        age = self._clock.now() - self.created_at
        is_model = not key.startswith("tool:")
        # Innermost first: when a sub-agent's share and the run's whole run out together,
        # the error names the share.
        for scope in reversed(scopes):
            self._check_one(f"agent:{scope.name}", scope.budget, scope.spend, age, step_id,
                            key, is_model)
        if self.run_level:
            spent = self.spent
            for level, budget in self.run_level:
                self._check_one(level, budget, spent, age, step_id, key, is_model)

    def _check_one(self, level: str, b: Budget, spent: Spend, age: float, step_id: str,
                   key: str, is_model: bool) -> None:
        run_id = self.run_id
        seconds = b.seconds
        for name, limit, used in (("max_steps", b.max_steps, spent.calls),
                                  ("max_tokens", b.max_tokens, spent.tokens),
                                  ("max_cost", b.max_cost, spent.cost),
                                  ("max_seconds", seconds, age)):
            if limit is None:
                continue
            if name == "max_cost":
                provider, _, model = key.partition(":")
                if spent.unpriced or (is_model and self.prices.price(provider, model) is None):
                    raise ConfigurationError(
                        f"run {run_id}: the {level} budget max_cost={limit} cannot be "
                        f"enforced: no price for {key if is_model else 'a model used'} "
                        "(give the runtime a price for it: Runtime(prices={...}))",
                        run_id=run_id, step_id=step_id)
            if used >= limit:
                where, _, agent = level.partition(":")
                self._note(step_id, key)
                raise BudgetExceededError(
                    f"run {run_id}: {level} budget {name}={limit:g} reached "
                    f"({used:g} used, {max(0.0, used - limit):g} over); the call to {key} "
                    f"at step {step_id} was not made", budget=name, level=where,
                    agent=agent or None, limit=float(limit), used=float(used),
                    run_id=run_id, step_id=step_id)

    def left(self) -> Budget | None:
        """What remains here of the budgets in force (the run's levels and the agent
        runs this code is inside): for each limit, the least left at any level;
        ``max_seconds`` the earliest deadline. ``None`` when no budget is in force.

        Raises:
            BudgetExceededError: nothing remains of a limit at some level.
        """
        levels: list[tuple[str, Budget, Spend]] = []
        if self.run_level:
            spent = self.spent
            levels += [(level, b, spent) for level, b in self.run_level]
        levels += [(f"agent:{s.name}", s.budget, s.spend) for s in _agent_scopes.get()]
        if not levels:
            return None
        out: dict[str, Any] = {}
        for level, budget, spent in levels:
            try:
                part = budget.left(spent)
            except BudgetExceededError as exc:
                where, _, agent = level.partition(":")
                raise BudgetExceededError(
                    f"run {self.run_id}: {level} budget {exc.budget}={exc.limit:g} has "
                    f"nothing left to divide ({exc.used:g} used)", budget=exc.budget,
                    level=where, agent=agent or None, limit=exc.limit, used=exc.used,
                    run_id=self.run_id) from None
            for name in ("max_tokens", "max_cost", "max_steps", "max_seconds"):
                v = getattr(part, name)
                if v is not None and (out.get(name) is None or v < out[name]):
                    out[name] = v
        return Budget(**out)

    def settled(self, result: Any, *, live: bool) -> None:
        """Count a call that settled (``result`` is ``None`` for a failed one): into the
        run's totals when it ran in this execution, into every agent scope always (an
        agent's totals are rebuilt as its loop replays)."""
        tokens = 0
        cost: float | None = 0.0
        if isinstance(result, ModelResponse):
            tokens = result.usage.total_tokens
            cost = self.prices.cost(result.provider, result.model, result.usage.input_tokens,
                                    result.usage.output_tokens)
        if live:
            self.live.add(tokens, cost)
        for scope in _agent_scopes.get():
            scope.spend.add(tokens, cost)

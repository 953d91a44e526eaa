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
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, final

from .._clock import Clock
from ..errors import BudgetExceededError, ConfigurationError
from ..models import ModelResponse
from ..store._base import Event
from ._cost import PriceTable, call_usages

__all__ = ["Budget", "RunBudget", "Spend", "agent_budget"]


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
        if self.run_level:
            spent = self.spent
            for level, budget in self.run_level:
                self._check_one(level, budget, spent, age, step_id, key, is_model)
        for scope in scopes:
            self._check_one(f"agent:{scope.name}", scope.budget, scope.spend, age, step_id,
                            key, is_model)

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
                where = level if not level.startswith("agent:") else "agent"
                self._note(step_id, key)
                raise BudgetExceededError(
                    f"run {run_id}: {level} budget {name}={limit:g} reached "
                    f"({used:g} used, {max(0.0, used - limit):g} over); the call to {key} "
                    f"at step {step_id} was not made", budget=name, level=where,
                    limit=float(limit), used=float(used), run_id=run_id, step_id=step_id)

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

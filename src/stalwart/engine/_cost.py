"""What model calls cost: a price table, and usage and cost read from a run's journal.

Prices are USD per million tokens, input and output, per ``provider:model``. The
built-in table (:data:`DEFAULT_PRICES`, dated :data:`PRICES_AS_OF`) covers common models
and is only a starting point: providers change prices, so a runtime takes its own
(``Runtime(prices={...})`` or a lookup function). ``sim:*`` and ``function:*`` (the
models a test scripts) cost nothing, explicitly.

A model with no price has an *unknown* cost — ``None``, never zero — and a total that
includes one is unknown too (with the priced part kept as a lower bound), so a report
never understates what a run spent.

Usage comes from the journal alone: every model turn is a step named ``chat:{agent}``
whose recorded result is the :class:`~stalwart.models.ModelResponse` (tokens, the model
that answered, its provider); tool calls are steps named ``tool:{name}``; failed
attempts are ``attempt_failed`` events. Nothing keeps a second truth.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeAlias, final

from ..errors import ConfigurationError
from ..store._base import Event, EventKind

__all__ = [
    "DEFAULT_PRICES",
    "PRICES_AS_OF",
    "CallUsage",
    "Price",
    "PriceTable",
    "Prices",
    "Tally",
    "UsageReport",
    "call_usages",
    "usage_report",
]


@final
@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigurationError(f"Price.{name} must be a non-negative number")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for that many tokens."""
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


PRICES_AS_OF: Final = "2025-06"
"""When :data:`DEFAULT_PRICES` was read off the providers' pricing pages."""

DEFAULT_PRICES: Final[Mapping[str, Price]] = {
    "sim:*": Price(0.0, 0.0),
    "function:*": Price(0.0, 0.0),
    "openai:gpt-4o": Price(2.50, 10.00),
    "openai:gpt-4o-mini": Price(0.15, 0.60),
    "openai:gpt-4.1": Price(2.00, 8.00),
    "openai:gpt-4.1-mini": Price(0.40, 1.60),
    "openai:gpt-4.1-nano": Price(0.10, 0.40),
    "openai:o3": Price(2.00, 8.00),
    "openai:o4-mini": Price(1.10, 4.40),
    "anthropic:claude-opus-4": Price(15.00, 75.00),
    "anthropic:claude-sonnet-4": Price(3.00, 15.00),
    "anthropic:claude-3-7-sonnet": Price(3.00, 15.00),
    "anthropic:claude-3-5-sonnet": Price(3.00, 15.00),
    "anthropic:claude-3-5-haiku": Price(0.80, 4.00),
}
"""Built-in prices, USD per million input/output tokens, as of :data:`PRICES_AS_OF`.
A key ``provider:*`` prices every model of that provider."""

PriceLookup: TypeAlias = Callable[[str, str], "Price | None"]
Prices: TypeAlias = "PriceTable | Mapping[str, Price | tuple[float, float]] | PriceLookup"
"""What ``Runtime(prices=...)`` takes: a table, overrides over the defaults, or a
function ``(provider, model) -> Price | None`` consulted before the defaults."""


@final
class PriceTable:
    """Prices by ``provider:model``.

    A model matches its exact key, else the longest key that is a prefix of it followed
    by ``-`` (a dated snapshot such as ``gpt-4o-2024-08-06`` takes ``gpt-4o``'s price),
    else ``provider:*``.

    Args:
        prices: entries over (or, with ``defaults=False``, instead of) the built-in table.
        lookup: a function consulted first; ``None`` from it falls back to the table.
        defaults: start from :data:`DEFAULT_PRICES`.
    """

    def __init__(self, prices: Mapping[str, Price | tuple[float, float]] | None = None, *,
                 lookup: PriceLookup | None = None, defaults: bool = True) -> None:
        table: dict[str, Price] = dict(DEFAULT_PRICES) if defaults else {}
        for key, value in (prices or {}).items():
            if ":" not in key:
                raise ConfigurationError(f"price key {key!r} must be 'provider:model'")
            table[key] = value if isinstance(value, Price) else Price(*value)
        self._table = table
        self._lookup = lookup
        self._cache: dict[tuple[str, str], Price | None] = {}

    @classmethod
    def of(cls, prices: Prices | None) -> PriceTable:
        """A table from whatever ``Runtime(prices=...)`` was given."""
        if prices is None:
            return cls()
        if isinstance(prices, PriceTable):
            return prices
        if callable(prices):
            return cls(lookup=prices)
        return cls(prices)

    def price(self, provider: str, model: str) -> Price | None:
        """The price of ``provider:model``, or ``None`` when it is unknown."""
        key = (provider, model)
        if key in self._cache:
            return self._cache[key]
        found = self._lookup(provider, model) if self._lookup is not None else None
        if found is None:
            found = self._table.get(f"{provider}:{model}")
        if found is None:
            best = ""
            for k in self._table:
                p, _, name = k.partition(":")
                if p == provider and model.startswith(name + "-") and len(name) > len(best):
                    best = name
            found = self._table.get(f"{provider}:{best}") if best else None
        if found is None:
            found = self._table.get(f"{provider}:*")
        self._cache[key] = found
        return found

    def cost(self, provider: str, model: str, input_tokens: int,
             output_tokens: int) -> float | None:
        """USD for one call, or ``None`` when the model has no price."""
        price = self.price(provider, model)
        return None if price is None else price.cost(input_tokens, output_tokens)


# -- usage from the journal ------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class CallUsage:
    """One model or tool call as the journal records it.

    Attributes:
        step_id, name: the step (``chat:{agent}`` or ``tool:{name}``).
        kind: ``"model"`` or ``"tool"``.
        key: ``provider:model`` that answered (or was asked, if none did), or
            ``tool:name``.
        agent: the agent of a model turn.
        ok: the call produced a result.
        attempts: attempts made (failed ones plus the successful one).
        errors: the error type of each failed attempt (short class names), and
            ``semantic:<type>`` for an outcome that failed its check.
        input_tokens, output_tokens: from the response's usage.
        cost: USD, ``None`` when unknown (no price) — zero only when priced at zero.
        started_at: wall-clock start when journaled (``call_timed``), else ``None``.
        duration: seconds of the last attempt when journaled, else ``None``.
        attempt_durations: seconds of every journaled attempt (failed ones included).
        reused: copied from the run this one was forked from (nothing was spent).
        settled: the step has its outcome (completed or failed), not only attempts.
        made: ``False`` for a call refused before anything was sent: a budget stop, or
            a configuration error such as an unpriced model under ``max_cost``.
        failures: ``(key, error, duration)`` of each failed attempt: a fallback's call
            holds its primary's failures here (see :meth:`by_key`).
    """

    step_id: str
    name: str
    kind: str
    key: str
    agent: str | None
    ok: bool
    attempts: int
    errors: tuple[str, ...]
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = 0.0
    started_at: float | None = None
    duration: float | None = None
    attempt_durations: tuple[float, ...] = ()
    reused: bool = False
    settled: bool = True
    made: bool = True
    failures: tuple[tuple[str, str, float | None], ...] = ()

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def by_key(self) -> list[CallUsage]:
        """The call as each dependency it tried saw it: the one that answered (or was
        tried last) with the tokens, the cost and its own attempts; each other one (a
        primary that failed over to a fallback) with its failed attempts, as a failed
        call of its own. Per-dependency views count these; totals count the call. A call
        refused before a model was chosen (a budget stop of a model turn) belongs to no
        dependency: none."""
        if not self.made and self.key == "?":
            return []
        others: dict[str, list[tuple[str, float | None]]] = {}
        for key, error, duration in self.failures:
            if key != self.key:
                others.setdefault(key, []).append((error, duration))
        if not others:
            return [self]
        errors, durations = list(self.errors), list(self.attempt_durations)
        parts = []
        for key, failed in others.items():
            for error, duration in failed:
                errors.remove(error)
                if duration is not None:
                    durations.remove(duration)
            parts.append(replace(
                self, key=key, ok=False, attempts=len(failed),
                errors=tuple(e for e, _ in failed), input_tokens=0, output_tokens=0,
                cost=0.0, started_at=None, duration=None,
                attempt_durations=tuple(d for _, d in failed if d is not None),
                failures=tuple((key, e, d) for e, d in failed)))
        own = replace(self, attempts=self.attempts - sum(map(len, others.values())),
                      errors=tuple(errors), attempt_durations=tuple(durations),
                      failures=tuple(f for f in self.failures if f[0] == self.key))
        return [*parts, own]


@final
@dataclass(slots=True)
class Tally:
    """Calls, tokens and cost summed over some calls."""

    calls: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    priced_cost: float = 0.0
    """The sum over calls with a known price (a lower bound when some are unpriced)."""
    unpriced_calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    """Calls refused before anything was sent (a budget stop): not in ``calls``."""

    def add(self, call: CallUsage) -> None:
        if not call.made:
            self.refused += 1
            for e in call.errors:
                self.errors[e] = self.errors.get(e, 0) + 1
            return
        self.calls += 1
        self.failed += 0 if call.ok else 1
        self.input_tokens += call.input_tokens
        self.output_tokens += call.output_tokens
        if call.cost is None:
            self.unpriced_calls += 1
        else:
            self.priced_cost += call.cost
        for e in call.errors:
            self.errors[e] = self.errors.get(e, 0) + 1

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cost(self) -> float | None:
        """USD, or ``None`` when any call had no price (unknown, never understated)."""
        return None if self.unpriced_calls else self.priced_cost

    def as_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "failed": self.failed,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "tokens": self.tokens, "cost": self.cost, "priced_cost": self.priced_cost,
                "unpriced_calls": self.unpriced_calls, "errors": dict(self.errors),
                "refused": self.refused}


@final
@dataclass(frozen=True, slots=True)
class UsageReport:
    """Tokens, calls and cost of one run: in total, per agent, per model, per tool.

    Calls reused from the run this one was forked from are listed in ``calls`` (with
    ``reused=True``) but not counted in the totals: this run did not spend them.
    """

    total: Tally
    by_agent: dict[str, Tally]
    by_model: dict[str, Tally]
    by_tool: dict[str, Tally]
    calls: tuple[CallUsage, ...]

    def as_json(self) -> dict[str, Any]:
        return {"total": self.total.as_json(),
                "by_agent": {k: v.as_json() for k, v in self.by_agent.items()},
                "by_model": {k: v.as_json() for k, v in self.by_model.items()},
                "by_tool": {k: v.as_json() for k, v in self.by_tool.items()},
                "reused_calls": sum(1 for c in self.calls if c.reused)}


def _short(error_type: str) -> str:
    return error_type.rsplit(".", 1)[-1]


def forked_steps(events: Iterable[Event]) -> frozenset[str]:
    """Step ids a forked run copied from its origin (empty for other runs)."""
    for ev in events:
        if ev.kind == EventKind.RUN_FORKED:
            try:
                return frozenset(json.loads(ev.payload or "{}").get("reused", ()))
            except (ValueError, AttributeError):
                return frozenset()
        if ev.kind not in (EventKind.RUN_CREATED,):
            break
    return frozenset()


_REFUSALS = frozenset({"BudgetExceededError", "ConfigurationError"})
"""What a call that failed before any attempt was refused with: nothing was sent."""


def call_usages(events: Iterable[Event], prices: PriceTable) -> list[CallUsage]:
    """Every settled or attempted model and tool call of a journal, in step order of
    first appearance."""
    evs = list(events)
    reused = forked_steps(evs)
    by_step: dict[str, list[Event]] = {}
    for ev in evs:
        if ev.step_id is not None and ev.name is not None and (
                ev.name.startswith("chat:") or ev.name.startswith("tool:")):
            by_step.setdefault(ev.step_id, []).append(ev)
    out = []
    for sid, group in by_step.items():
        fold = _Call(group[0].name or "")
        for ev in group:
            fold.add(ev, prices)
        out.append(fold.usage(sid, sid in reused))
    return out


@dataclass(slots=True)
class _Call:
    """One call's events, folded in journal order (see :func:`call_usages`)."""

    name: str
    errors: list[str] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    failures: list[tuple[str, str, float | None]] = field(default_factory=list)
    key: str = ""
    made: bool = True
    attempts: int = 0
    ok: bool = False
    settled: bool = False
    usage_: tuple[int, int] = (0, 0)
    cost: float | None = 0.0
    started: float | None = None
    duration: float | None = None

    def __post_init__(self) -> None:
        if not self.is_model:
            self.key = self.name

    @property
    def is_model(self) -> bool:
        return self.name.startswith("chat:")

    def add(self, ev: Event, prices: PriceTable) -> None:
        if ev.kind == EventKind.ATTEMPT_FAILED:
            self._attempt_failed(_loads(ev.payload))
        elif ev.kind == EventKind.CALL_TIMED:
            d = _loads(ev.payload)
            self.started = _num(d.get("started_at"))
            self.duration = _num(d.get("duration"))
            if self.duration is not None:
                self.durations.append(self.duration)
        elif ev.kind == EventKind.CHECK_FAILED:
            d = _loads(ev.payload)
            self.errors.append("semantic:" + _short(str(d.get("error", "OutcomeCheckError"))))
        elif ev.kind == EventKind.STEP_COMPLETED:
            self._completed(_loads(ev.payload) if self.is_model else {}, prices)
        elif ev.kind == EventKind.STEP_FAILED:
            self.settled = True
            if self.attempts == 0:  # failed without a failed attempt: a budget stop (no
                # call was made) or a result that could not be recorded (one was)
                kind = _short(str(_loads(ev.payload).get("type", "?")))
                self.errors.append(kind)
                self.made = kind not in _REFUSALS
                self.attempts = 1 if self.made else 0

    def _attempt_failed(self, d: dict[str, Any]) -> None:
        self.attempts += 1
        error = _short(str(d.get("error", {}).get("type", "?")))
        self.errors.append(error)
        took = _num(d.get("duration"))
        if took is not None:
            self.durations.append(took)
        if self.is_model and not self.key:
            self.key = str(d.get("key", ""))
        self.failures.append((str(d.get("key") or self.name), error, took))

    def _completed(self, d: dict[str, Any], prices: PriceTable) -> None:
        self.ok = self.settled = True
        self.attempts += 1
        if self.is_model:
            u = d.get("usage") or {}
            self.usage_ = (int(u.get("input_tokens", 0)), int(u.get("output_tokens", 0)))
            provider, model = str(d.get("provider", "")), str(d.get("model", ""))
            if provider or model:
                self.key = f"{provider}:{model}"
            self.cost = prices.cost(provider, model, *self.usage_)

    def usage(self, step_id: str, reused: bool) -> CallUsage:
        name, is_model = self.name, self.is_model
        # A model call nothing answered was not billed, as far as we know.
        cost = 0.0 if is_model and not self.ok else self.cost
        return CallUsage(
            step_id=step_id, name=name, kind="model" if is_model else "tool",
            key=(self.key or "?") if is_model else self.key,
            agent=name[len("chat:"):] if is_model else None, ok=self.ok,
            attempts=self.attempts, errors=tuple(self.errors), input_tokens=self.usage_[0],
            output_tokens=self.usage_[1], cost=cost, started_at=self.started,
            duration=self.duration, attempt_durations=tuple(self.durations),
            reused=reused, settled=self.settled, made=self.made,
            failures=tuple(self.failures))


def usage_report(events: Iterable[Event], prices: PriceTable | None = None) -> UsageReport:
    """Tokens, calls and cost of the run whose journal is ``events``."""
    calls = call_usages(events, prices or PriceTable())
    total = Tally()
    by_agent: dict[str, Tally] = {}
    by_model: dict[str, Tally] = {}
    by_tool: dict[str, Tally] = {}
    for c in calls:
        if c.reused:
            continue
        total.add(c)
        if c.kind == "model":
            by_agent.setdefault(c.agent or "?", Tally()).add(c)
        for part in c.by_key():  # a primary that failed over counts its own failure
            (by_model if c.kind == "model" else by_tool).setdefault(
                part.key, Tally()).add(part)
    return UsageReport(total=total, by_agent=by_agent, by_model=by_model, by_tool=by_tool,
                       calls=tuple(calls))


def _loads(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None

"""Semantic coordination instability, made visible: detectors over a run's journal.

Failures that return HTTP 200 leave no error in a log; they leave a pattern in the
journal. Three detectors read it (``stalwart stats`` shows them, the trace shows the
steps they rest on) and one budget bounds the cost:

* **Semantic failures** per member and model: the ``semantic`` list each ensemble's
  decision step journals (a dissenting or abstaining voter, a rejected draft, a failed
  trial, a refuted blackboard entry) and the agents' own ``check_failed`` answers
  (re-asked).
* **Semantic retry amplification**: the re-asks (``check_failed``), tool-call repairs
  (``tool_call_repaired``), extra critic rounds and extra Reflexion trials a run spent,
  with the tokens of the rejected rounds and trials, per accepted answer.
  :func:`limit_semantic_retries` sets a per-run budget on the extra rounds and trials:
  the one past it raises :class:`~stalwart.errors.BudgetExceededError`
  (``budget="max_semantic_retries"``), which dead-letters the run as any budget does.
* **Planner oscillation**: an agent alternating between the same plans —
  A -> B -> A -> B, a cycle of 2 or 3 distinct steps repeated — which the exact-repeat
  loop detection (the same tool call ``loop_limit`` times) does not catch because no
  step repeats back to back. Read from an agent's sequence of tool calls (its model
  turns) and from the drafts of a refine loop or the answers of Reflexion trials.
  :func:`oscillation` is the rule; a loop that oscillates journals the evidence
  (``semantic:oscillation``) when it sees it.
* **Context poisoning**: entries of a blackboard built on a refuted entry, with their
  chain (:func:`~stalwart.patterns.poisoning`; ``stalwart board`` and ``stalwart stats``).
"""

from __future__ import annotations

import json
import weakref
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

from ..errors import BudgetExceededError, ConfigurationError
from ..store._base import Event, EventKind
from ._members import record

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["Oscillation", "SemanticReport", "limit_semantic_retries", "oscillation",
           "semantic_report"]

DECISIONS = ("vote:tally", "refine:round:", "reflexion:trial:", "mixture:aggregate",
             "semantic:oscillation")
"""Names (prefixes) of the ensembles' decision steps, whose results the report reads;
and the blackboards' ``board:NAME:refuted`` steps."""


@final
@dataclass(frozen=True, slots=True)
class Oscillation:
    """A cycle at the end of a sequence: ``cycle`` (2 or 3 distinct items) seen
    ``repeats`` times in a row, from index ``start``."""

    cycle: tuple[str, ...]
    repeats: int
    start: int

    def as_json(self) -> dict[str, Any]:
        return {"cycle": list(self.cycle), "repeats": self.repeats, "start": self.start}


def oscillation(seq: Sequence[str], *, min_repeats: int = 2,
                max_period: int = 3) -> Oscillation | None:
    """The oscillation the sequence ends in: its last ``p * r`` items are a cycle of
    ``p`` (2 to ``max_period``) distinct items repeated ``r >= min_repeats`` times.
    ``A B A B`` is one (cycle ``A B``, 2 repeats); ``A A A`` is not (an exact repeat,
    the loop detector's), nor is ``A B C`` (progress). The shortest period wins."""
    for p in range(2, max_period + 1):
        cycle = tuple(seq[-p:]) if len(seq) >= p else ()
        if len(set(cycle)) != p:
            continue
        r = 0
        while len(seq) >= (r + 1) * p and tuple(seq[len(seq) - (r + 1) * p:
                                                     len(seq) - r * p]) == cycle:
            r += 1
        # a partial cycle before the full ones still belongs to it (B A B A B: A B x2)
        if r >= min_repeats:
            return Oscillation(cycle, r, len(seq) - r * p)
    return None


# -- the per-run budget --------------------------------------------------------------

_BUDGETS: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()
"""Per execution: ``[limit, used]``. Rebuilt by replay: the retries are counted in
workflow code, after the journaled steps that decided them."""


def limit_semantic_retries(ctx: Context, max_retries: int | None) -> None:
    """Bound the extra critic rounds and Reflexion trials of this run (all loops
    together) to ``max_retries``; ``None`` removes the bound. Call it at the start of
    the workflow (it is not journaled; every execution sets it again).

    Raises:
        ConfigurationError: not an int >= 0.
    """
    if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(
            max_retries, int) or max_retries < 0):
        raise ConfigurationError(f"limit_semantic_retries: max_retries must be an int "
                                 f">= 0 or None, not {max_retries!r}")
    if max_retries is None:
        _BUDGETS.pop(ctx.execution, None)
    else:
        used = _BUDGETS.get(ctx.execution, [0, 0])[1]
        _BUDGETS[ctx.execution] = [max_retries, used]


def spend_retry(ctx: Context, what: str) -> None:
    """Count one semantic retry (a critic round or Reflexion trial after the first)
    against the run's budget, before it is made.

    Raises:
        BudgetExceededError: the retry would exceed the budget (nothing is asked).
    """
    budget = _BUDGETS.get(ctx.execution)
    if budget is None:
        return
    limit, used = budget
    if used + 1 > limit:
        raise BudgetExceededError(
            f"semantic retry budget of this run exhausted: {what} would be retry "
            f"{used + 1} (max_semantic_retries={limit})", budget="max_semantic_retries",
            level="run", limit=float(limit), used=float(used + 1), run_id=ctx.run_id)
    budget[1] = used + 1


async def watch(ctx: Context, where: str, seq: Sequence[str]) -> Oscillation | None:
    """After each rejected round or failed trial: if the loop's outputs now end in an
    oscillation that just reached :func:`oscillation`'s threshold, journal the evidence
    as the step ``semantic:oscillation`` (its cycle, repeats and where) and note it to
    the metrics. Journaled once per oscillation: an output that continues it (in
    whatever phase) makes no new record."""
    found = oscillation(seq)
    if found is None or oscillation(seq[:-1]) is not None:
        return found  # none, or one already journaled that goes on
    await record(ctx, "semantic:oscillation", {"where": where, **found.as_json()},
                 notes=[("oscillation", where)])
    return found


# -- the report ----------------------------------------------------------------------


@final
@dataclass(slots=True)
class SemanticReport:
    """What a set of journals says about semantic failure (see the module docstring).

    Attributes:
        failures: semantic failures by key (the model, ``provider:name``, or
            ``member:NAME`` for a function member).
        retries: re-asks, repairs, extra rounds and extra trials, by kind.
        retry_tokens: tokens spent on rejected rounds and failed trials and on re-asked
            answers.
        accepted: answers accepted after a check (a critic's acceptance, a trial that
            passed, a vote's winner).
        oscillations: ``(run_id, where, Oscillation)`` found.
        runs_over_budget: runs ended by the semantic retry budget.
    """

    failures: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    retry_tokens: int = 0
    accepted: int = 0
    oscillations: list[tuple[str, str, Oscillation]] = field(default_factory=list)
    runs_over_budget: int = 0

    @property
    def amplification(self) -> float | None:
        """Retries per accepted answer (``None`` without an accepted answer)."""
        return sum(self.retries.values()) / self.accepted if self.accepted else None

    def as_json(self) -> dict[str, Any]:
        return {"failures": dict(self.failures), "retries": dict(self.retries),
                "retry_tokens": self.retry_tokens, "accepted": self.accepted,
                "amplification": self.amplification,
                "oscillations": [{"run_id": r, "where": w, **o.as_json()}
                                 for r, w, o in self.oscillations],
                "runs_over_budget": self.runs_over_budget}


def _loads(text: str | None) -> Any:
    try:
        return json.loads(text or "null")
    except ValueError:
        return None


def semantic_report(runs: Iterable[tuple[str, Sequence[Event]]],
                    report: SemanticReport | None = None) -> SemanticReport:
    """Fold the journals of ``runs`` (``(run_id, events)``) into a report."""
    out = report or SemanticReport()
    for run_id, events in runs:
        _fold_run(out, run_id, events)
    return out


def _fold_run(out: SemanticReport, run_id: str, events: Sequence[Event]) -> None:
    plans: dict[str, list[str]] = {}
    reasked = {ev.step_id for ev in events if ev.kind == EventKind.CHECK_FAILED}
    for ev in events:
        name = ev.name or ""
        if ev.kind == EventKind.CHECK_FAILED:
            out.retries["re-ask"] += 1
            d = _loads(ev.payload) or {}
            out.failures[str(d.get("key") or name.removeprefix("chat:"))] += 1
        elif ev.kind == EventKind.TOOL_CALL_REPAIRED:
            out.retries["repair"] += 1
        elif ev.kind == EventKind.RUN_DEAD_LETTERED and "max_semantic_retries" in (
                ev.payload or ""):
            out.runs_over_budget += 1
        if ev.kind != EventKind.STEP_COMPLETED:
            continue
        if name.startswith("chat:"):
            turn = _loads(ev.payload) or {}
            if ev.step_id in reasked:
                usage = turn.get("usage") or {}
                out.retry_tokens += int(usage.get("input_tokens", 0)) + int(
                    usage.get("output_tokens", 0))
            calls = turn.get("tool_calls") or []
            if calls:
                plans.setdefault(name[5:], []).append(" ".join(
                    f"{c.get('name')}({c.get('arguments')})" for c in calls))
            continue
        if not (name.startswith(DECISIONS) or (name.startswith("board:")
                                               and name.endswith(":refuted"))):
            continue
        d = _loads(ev.payload)
        if not isinstance(d, dict):
            continue
        _fold_decision(out, run_id, name, d)
    for agent, seq in plans.items():
        found = oscillation(seq)
        if found is not None:
            out.oscillations.append((run_id, f"agent {agent}", found))


def _fold_decision(out: SemanticReport, run_id: str, name: str, d: dict[str, Any]) -> None:
    for s in d.get("semantic") or ():
        if isinstance(s, dict):
            out.failures[str(s.get("model") or f"member:{s.get('member')}")] += 1
    if name == "vote:tally" and d.get("winner") is not None:
        out.accepted += 1
    elif name.startswith("refine:round:"):
        if d.get("round", 1) > 1:
            out.retries["critic round"] += 1
        if d.get("accepted"):
            out.accepted += 1
        else:
            out.retry_tokens += int(d.get("tokens") or 0)
    elif name.startswith("reflexion:trial:"):
        if d.get("trial", 1) > 1:
            out.retries["reflexion trial"] += 1
        if (d.get("evaluation") or {}).get("success"):
            out.accepted += 1
        else:
            out.retry_tokens += int(d.get("tokens") or 0)
    elif name == "semantic:oscillation":
        cycle = tuple(str(c) for c in d.get("cycle") or ())
        out.oscillations.append((run_id, str(d.get("where", "?")),
                                 Oscillation(cycle, int(d.get("repeats", 0)),
                                             int(d.get("start", 0)))))

"""Semantic failure counted like any other: the oscillation rule, the per-run semantic
retry budget, oscillating loops journaled, the journal report (failures per model,
retries per accepted answer, oscillating agents), and the opt-in circuit breaker."""

from __future__ import annotations

import json
from typing import Any

import pytest

import stalwart as sw
from stalwart.patterns import (
    CritiqueInput,
    RefineInput,
    limit_semantic_retries,
    oscillation,
    semantic_report,
)
from stalwart.policies import BreakerState
from stalwart.store import EventKind, RunStatus
from stalwart.testing import MemoryStore

T0 = 1_700_000_000.0


def make_app() -> sw.Runtime:
    return sw.Runtime(MemoryStore(), clock=sw.FakeClock(T0, autojump=True))


def never(given: CritiqueInput) -> sw.Verdict:
    return sw.Verdict(accept=False, reasons=["no"])


@pytest.mark.parametrize(("seq", "expected"), [
    ("ABAB", (("A", "B"), 2, 0)),
    ("xABABAB", (("A", "B"), 3, 1)),
    ("BABAB", (("A", "B"), 2, 1)),
    ("ABCABC", (("A", "B", "C"), 2, 0)),
    ("AAAA", None),           # an exact repeat: the loop detector's, not this one's
    ("ABC", None),            # progress
    ("ABA", None),            # not yet twice
    ("ABAC", None),
])
def test_oscillation_is_a_cycle_of_distinct_steps_repeated(seq: str, expected: Any) -> None:
    """A cycle of 2-3 distinct items at least twice at the end; the shortest wins."""
    found = oscillation(list(seq))
    assert (None if found is None else (found.cycle, found.repeats, found.start)) == expected


async def test_the_semantic_retry_budget_stops_the_round_past_it() -> None:
    """With max 2 retries for the run, a critic that never accepts gets 3 drafts (one
    first, two retries): the fourth is refused with BudgetExceededError before the
    generator is asked; the run is dead-lettered, and the report counts it."""
    drafts: list[int] = []

    def writer(given: RefineInput) -> str:
        drafts.append(given.round)
        return f"draft {given.round}"

    app = make_app()

    @app.workflow
    async def capped(ctx: sw.Context) -> Any:
        limit_semantic_retries(ctx, 2)
        return (await sw.refine(ctx, writer, never, "t", max_rounds=10)).output

    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(capped, run_id="c")
        rec = await app.get_run("c")
        events = await app.events("c")
    assert rec.status == RunStatus.DEAD_LETTERED
    assert caught.value.error_type == "stalwart.errors.BudgetExceededError"
    attrs = json.loads(rec.error or "{}")["attributes"]
    assert (attrs["budget"], attrs["limit"], attrs["used"]) == ("max_semantic_retries", 2, 3)
    assert drafts == [1, 2, 3]
    report = semantic_report([("c", events)])
    assert report.runs_over_budget == 1
    assert report.retries["critic round"] == 2 and report.accepted == 0
    assert report.failures["member:writer"] == 3


async def test_a_refine_loop_that_oscillates_journals_the_evidence_once() -> None:
    """Drafts A, B, A, B, A: the oscillation is journaled when it first shows (after
    the fourth draft), once, with its cycle; the report finds it."""
    def flipper(given: RefineInput) -> str:
        return "plan A" if given.round % 2 else "plan B"

    app = make_app()

    @app.workflow
    async def flip(ctx: sw.Context) -> Any:
        return (await sw.refine(ctx, flipper, never, "t", max_rounds=5,
                                on_exhausted="return")).rounds

    async with app:
        assert await app.run(flip, run_id="f") == 5
        events = await app.events("f")
    found = [json.loads(e.payload or "{}") for e in events
             if e.kind == EventKind.STEP_COMPLETED and e.name == "semantic:oscillation"]
    assert [(f["where"], f["cycle"], f["repeats"]) for f in found] == [
        ("refine flipper", ['"plan A"', '"plan B"'], 2)]
    [(run, where, osc)] = semantic_report([("f", events)]).oscillations
    assert (run, where, osc.repeats) == ("f", "refine flipper", 2)


async def test_the_report_reads_agents_plans_dissent_and_reasks_from_the_journal() -> None:
    """An agent whose model alternates two tool calls (never the same one three times,
    so no ToolLoopError) is an oscillating planner; a dissenting voter is a semantic
    failure of its model; a re-asked answer is a retry with its tokens."""
    calls = [("lookup", {"q": "a"}), ("lookup", {"q": "b"})] * 2

    def planner_model(request: sw.ModelRequest) -> Any:
        done = sum(1 for m in request.messages if m.role == "tool")
        if done < len(calls):
            name, args = calls[done]
            return sw.ToolCallRequest.create(f"c{done}", name, args)
        return "settled"

    def lookup(q: str) -> str:
        """Look it up."""
        return f"about {q}"

    planner = sw.Agent("planner", sw.FunctionModel(planner_model, name="planner"),
                       tools=[sw.Tool(lookup)])
    answers = iter(["not json", '{"city": "Oslo"}'])
    picky = sw.Agent("picky", sw.FunctionModel(lambda r: next(answers), name="picky"),
                     output_type=dict)
    voters = [sw.Agent(n, sw.FunctionModel(lambda r, a=a: a, name=n))
              for n, a in (("good1", "4"), ("good2", "4"), ("bad", "5"))]
    app = make_app()

    @app.workflow
    async def busy(ctx: sw.Context) -> list[Any]:
        plan = await planner.run(ctx, "plan it")
        city = await picky.run(ctx, "where?")
        won = await sw.vote(ctx, voters, "2+2?")
        return [plan, city, won.winner]

    async with app:
        assert await app.run(busy, run_id="b") == ["settled", {"city": "Oslo"}, "4"]
        events = await app.events("b")
    report = semantic_report([("b", events)])
    [(_, where, osc)] = report.oscillations
    assert where == "agent planner" and osc.repeats == 2
    assert report.failures["function:bad"] == 1
    assert report.failures["function:picky"] == 1
    assert report.retries["re-ask"] == 1 and report.retry_tokens > 0
    assert report.accepted == 1 and report.amplification == 1.0


@pytest.mark.parametrize("opt_in", [True, False])
async def test_dissent_opens_the_liars_breaker_only_when_opted_in(opt_in: bool) -> None:
    """With breaker=True each dissent is a late failure of the liar's model: two votes
    (two answers, two dissents) make a 50% failure rate over 4 outcomes and open its
    breaker; without, its answers all count as successes and it stays closed."""
    config = sw.CircuitBreakerConfig(window_size=10, minimum_calls=4,
                                     failure_rate_threshold=50)
    policy = sw.Policy(breaker=config)
    voters = [sw.Agent(n, sw.FunctionModel(lambda r, a=a: a, name=n), policy=policy)
              for n, a in (("honest", "4"), ("honest2", "4"), ("liar", "5"))]
    app = make_app()

    @app.workflow
    async def two_votes(ctx: sw.Context) -> list[str]:
        return [(await sw.vote(ctx, voters, f"2+2? ({i})", breaker=opt_in)).winner
                for i in range(2)]

    async with app:
        assert await app.run(two_votes) == ["4", "4"]
        state = app.breakers.get("function:liar").state
        honest = app.breakers.get("function:honest").state
    assert state == (BreakerState.OPEN if opt_in else BreakerState.CLOSED)
    assert honest == BreakerState.CLOSED


def test_a_bad_budget_is_refused() -> None:
    """limit_semantic_retries takes an int >= 0 or None."""
    with pytest.raises(sw.ConfigurationError):
        limit_semantic_retries(None, -1)  # type: ignore[arg-type]

"""Budgets across sub-agents: ``Budget.split`` by weight, ``ctx.split_budget`` of what
remains, and sub-agents held to their shares while the parent's total bounds the sum."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stalwart as sw
from stalwart.models import ModelRequest, ToolCallRequest
from stalwart.testing import MemoryStore

WHOLE = sw.Budget(max_tokens=1000, max_cost=1.0, max_steps=10, max_seconds=60)


@pytest.mark.parametrize("weights", [{}, [], {"a": 0}, [1, -1], [math.inf], [math.nan],
                                     [True], ["2"], {"a": None}, "ab", 3])
def test_bad_weights_are_refused(weights: Any) -> None:
    with pytest.raises(sw.ConfigurationError, match=r"Budget\.split"):
        WHOLE.split(weights)


def test_a_split_by_name_and_by_position() -> None:
    """Floor-divided counts, exact dollars rounded down, the deadline kept whole."""
    parts = WHOLE.split({"researcher": 2, "critic": 1})
    assert list(parts) == ["researcher", "critic"]
    r, c = parts["researcher"], parts["critic"]
    assert (r.max_tokens, r.max_steps, c.max_tokens, c.max_steps) == (666, 6, 333, 3)
    assert r.max_cost is not None and c.max_cost is not None
    assert r.max_cost + c.max_cost <= 1.0
    assert r.seconds == c.seconds == 60  # a deadline is not divisible
    assert sw.Budget(max_steps=9).split([1, 2]) == [sw.Budget(max_steps=3),
                                                    sw.Budget(max_steps=6)]
    assert sw.Budget().split([1, 1]) == [sw.Budget(), sw.Budget()]  # nothing to divide


def test_what_remains_is_split() -> None:
    used = sw.Spend(calls=4, tokens=400, cost=0.4)
    a, b = WHOLE.split([1, 1], used=used)
    assert a == b
    assert (a.max_tokens, a.max_steps) == (300, 3)
    assert a.max_cost == pytest.approx(0.3)
    assert WHOLE.left(used).max_tokens == 600


def test_nothing_left_or_a_zero_share_is_a_budget_error() -> None:
    with pytest.raises(sw.BudgetExceededError) as info:
        WHOLE.split([1], used=sw.Spend(calls=10))
    assert (info.value.budget, info.value.level, info.value.used) == ("max_steps", "split",
                                                                      10)
    with pytest.raises(sw.BudgetExceededError, match="part c"):
        sw.Budget(max_steps=4).split({"a": 2, "b": 2, "c": 1})
    with pytest.raises(sw.ConfigurationError, match="no price"):
        WHOLE.split([1], used=sw.Spend(calls=1, unpriced=1))


@settings(max_examples=300, deadline=None)
@given(tokens=st.integers(1, 10**9), steps=st.integers(1, 10**6),
       cost=st.floats(0.01, 1e6, allow_nan=False),
       used=st.integers(0, 10**6),
       weights=st.lists(st.one_of(st.integers(1, 1000), st.floats(0.001, 1000)),
                        min_size=1, max_size=12))
def test_parts_never_exceed_the_whole_and_are_proportional(
        tokens: int, steps: int, cost: float, used: int, weights: list[float]) -> None:
    whole = sw.Budget(max_tokens=tokens + used, max_steps=steps, max_cost=cost)
    try:
        parts = whole.split(weights, used=sw.Spend(tokens=used))
    except sw.BudgetExceededError as exc:  # only when some share would be zero
        total = sum(Fraction(w) for w in weights)
        if exc.budget == "max_cost":
            assert any(Fraction(cost) * Fraction(w) / total < Fraction(1, 10**300)
                       for w in weights)
            return
        left = tokens if exc.budget == "max_tokens" else steps
        assert any(Fraction(left) * Fraction(w) / total < 1 for w in weights)
        return
    total = sum(Fraction(w) for w in weights)
    for name, left in (("max_tokens", tokens), ("max_steps", steps)):
        got = [getattr(p, name) for p in parts]
        assert sum(got) <= left
        for g, w in zip(got, weights, strict=True):
            exact = Fraction(left) * Fraction(w) / total
            assert exact - 1 < g <= exact  # within one unit, never above
    costs = [p.max_cost for p in parts]
    assert math.fsum(costs) <= cost
    for g, w in zip(costs, weights, strict=True):
        exact = Fraction(cost) * Fraction(w) / total
        assert Fraction(g) <= exact and float(exact - Fraction(g)) <= 1e-9 * cost


def forever(request: ModelRequest) -> ToolCallRequest:
    """A model that never stops asking for the tool (new arguments each time)."""
    n = len(request.messages)
    return ToolCallRequest.create(f"c{n}", "search", {"q": f"page {n}"})


async def search(q: str) -> str:
    """Search."""
    return f"results for {q}"


async def test_sub_agents_run_with_their_shares_of_what_remains() -> None:
    """A workflow budget of 30 steps; a warm-up spends 6; the 24 left are split 2:1.
    Each looping sub-agent stops at its share (the error names it), both run in a
    gather, and the run never spends more than its whole; the split is a journaled
    step, so a replay (with the whole journal spent by then) gets the same shares."""
    app = sw.Runtime(store=MemoryStore(), models={
        "sim:loop": sw.SimulatedModel("loop", script=forever)})
    warmup = sw.Agent("warmup", "sim:loop", tools=[sw.Tool(search)], max_iterations=3,
                      fallback_output="warm")
    researcher = sw.Agent("researcher", "sim:loop", tools=[sw.Tool(search)],
                          max_iterations=1000, loop_limit=1000)
    critic = sw.Agent("critic", "sim:loop", tools=[sw.Tool(search)],
                      max_iterations=1000, loop_limit=1000)

    @app.workflow(budget=sw.Budget(max_steps=30, max_seconds=3600))
    async def research(ctx: sw.Context) -> dict[str, Any]:
        await warmup.run(ctx, "warm up")  # 3 model turns + 3 tool calls
        shares = await ctx.split_budget({"researcher": 2, "critic": 1})

        async def sub(agent: sw.Agent[str]) -> dict[str, Any]:
            try:
                await agent.run(ctx, "dig", budget=shares[agent.name])
            except sw.BudgetExceededError as exc:
                return {"agent": exc.agent, "level": exc.level, "budget": exc.budget,
                        "used": exc.used, "limit": exc.limit}
            return {}

        got = await ctx.gather(sub(researcher), sub(critic))
        return {"shares": {k: [v.max_steps, v.seconds] for k, v in shares.items()},
                "stops": got}

    async with app:
        h = await app.start(research)
        out = await h.result()
        events = await app.events(h.run_id)
        report = await app.replay(h.run_id)
    assert out["shares"] == {"researcher": [16, 3600], "critic": [8, 3600]}
    assert out["stops"] == [
        {"agent": "researcher", "level": "agent", "budget": "max_steps", "used": 16,
         "limit": 16},
        {"agent": "critic", "level": "agent", "budget": "max_steps", "used": 8,
         "limit": 8}]
    calls = [e for e in events if e.kind == "step_completed"
             and (e.name or "").startswith(("chat:", "tool:"))]
    assert len(calls) == 6 + 16 + 8 <= 30
    assert any(e.name == "budget:split" for e in events)
    assert report.deterministic, report.divergences


async def test_the_parents_total_bounds_the_sum_of_shares() -> None:
    """Shares larger than what the run has left (given by hand) do not let sub-agents
    spend past the run's own budget: the workflow level stops them."""
    app = sw.Runtime(store=MemoryStore(), models={
        "sim:loop": sw.SimulatedModel("loop", script=forever)})
    agents = [sw.Agent(n, "sim:loop", tools=[sw.Tool(search)], max_iterations=1000,
                       loop_limit=1000) for n in ("a", "b")]

    @app.workflow(budget=sw.Budget(max_steps=10))
    async def wf(ctx: sw.Context) -> list[str]:
        shares = sw.Budget(max_steps=100).split([1, 1])

        async def sub(agent: sw.Agent[str], share: sw.Budget) -> str:
            try:
                return await agent.run(ctx, "dig", budget=share)
            except sw.BudgetExceededError as exc:
                return exc.level

        return await ctx.gather(*(sub(a, s) for a, s in zip(agents, shares, strict=True)))

    async with app:
        h = await app.start(wf)
        assert await h.result() == ["workflow", "workflow"]
        events = await app.events(h.run_id)
    done = [e for e in events if e.kind == "step_completed"
            and (e.name or "").startswith(("chat:", "tool:"))]
    assert len(done) <= 10 + 1  # at most one call in flight per branch past the bound


async def test_split_budget_with_no_budget_in_force_gives_unlimited_shares() -> None:
    app = sw.Runtime(store=MemoryStore())

    @app.workflow
    async def wf(ctx: sw.Context) -> list[Any]:
        return [b == sw.Budget() for b in await ctx.split_budget([1, 2])]

    async with app:
        assert await (await app.start(wf)).result() == [True, True]

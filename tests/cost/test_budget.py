"""Budgets: runaway loops stop at the bound, the journal says why, totals survive resume."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import stalwart as sw
from stalwart.models import ModelRequest, ToolCallRequest
from stalwart.testing import MemoryStore


def forever(request: ModelRequest) -> ToolCallRequest:
    """A model that never stops asking for the tool (new arguments each time)."""
    n = len(request.messages)
    return ToolCallRequest.create(f"c{n}", "search", {"q": f"page {n}"})


def make_search(calls: list[str]) -> sw.Tool[Any, Any]:
    # async: a sync tool runs in a thread, and the autojump clock takes a thread wait
    # for idleness (virtual time would slip past the budget's exact bound).
    async def search(q: str) -> str:
        calls.append(q)
        return f"results for {q}"

    return sw.Tool(search)


def priced(request: ModelRequest) -> sw.ModelResponse:
    """Every turn: a tool call billed as 100k gpt-4o input tokens ($0.25)."""
    n = len(request.messages)
    return sw.ModelResponse(tool_calls=(ToolCallRequest.create(f"c{n}", "search",
                                                               {"q": str(n)}),),
                            finish_reason="tool_calls", model="gpt-4o", provider="openai",
                            usage=sw.Usage(input_tokens=100_000, output_tokens=0))


async def _failure(app: sw.Runtime, run_id: str) -> sw.BudgetExceededError:
    with pytest.raises(sw.RunFailedError) as info:
        await app.handle(run_id).result()
    cause = info.value.__cause__
    assert isinstance(cause, sw.BudgetExceededError), cause
    return cause


def test_budget_is_a_frozen_keyword_only_slotted_dataclass() -> None:
    """Frozen, keyword-only, slotted; bad limits are rejected; timedelta is accepted."""
    assert all(f.kw_only for f in dataclasses.fields(sw.Budget))
    assert sw.Budget.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "__slots__" in vars(sw.Budget)
    assert sw.Budget(max_seconds=timedelta(minutes=1)).seconds == 60.0
    for bad in ({"max_tokens": 0}, {"max_steps": 1.5}, {"max_cost": -1}, {"max_seconds": 0},
                {"max_tokens": True}, {"max_seconds": float("inf")},
                {"max_cost": float("nan")}):
        with pytest.raises(sw.ConfigurationError):
            sw.Budget(**bad)  # type: ignore[arg-type]
    assert sw.BudgetExceeded is sw.BudgetExceededError
    assert issubclass(sw.BudgetExceededError, sw.ResilienceError)


async def test_runtime_max_steps_stops_a_runaway_agent_at_the_bound(tmp_path: Path) -> None:
    """An agent that loops forever makes exactly max_steps calls, then stops."""
    tool_calls: list[str] = []
    model = sw.SimulatedModel("loop", script=forever)
    app = sw.Runtime(tmp_path / "j.db", models={"sim:loop": model},
                     budget=sw.Budget(max_steps=7))
    agent = sw.Agent("looper", "sim:loop", tools=[make_search(tool_calls)], max_iterations=1000,
                     loop_limit=1000)

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await agent.run(ctx, "go")

    async with app:
        h = await app.start(wf)
        err = await _failure(app, h.run_id)
        rec = await app.get_run(h.run_id)
        events = await app.events(h.run_id)
    assert model.statistics().calls == 4 and len(tool_calls) == 3
    assert (err.budget, err.level, err.limit, err.used, err.over) == (
        "max_steps", "runtime", 7.0, 7.0, 0.0)
    assert rec.status == sw.RunStatus.DEAD_LETTERED
    failed = [e for e in events if e.kind == "step_failed"]
    assert len(failed) == 1 and failed[0].step_id == "8"
    info = json.loads(failed[0].payload or "{}")
    assert info["type"].endswith("BudgetExceededError")
    assert "max_steps=7 reached (7 used, 0 over)" in info["message"]
    assert app.policy_counts["budget_exceeded"] == 1
    usage = sw.usage_report(events)  # the refused 8th call was never sent: not a call
    assert (usage.total.calls, usage.total.failed, usage.total.refused) == (7, 0, 1)


async def test_max_tokens_ends_at_most_one_call_over(tmp_path: Path) -> None:
    """A workflow token budget: the last call may cross it, no call starts after."""
    model = sw.SimulatedModel("loop", script=forever)
    app = sw.Runtime(tmp_path / "j.db", models={"sim:loop": model})
    agent = sw.Agent("looper", "sim:loop", tools=[make_search([])], max_iterations=1000,
                     loop_limit=1000)

    @app.workflow(name="bounded", budget=sw.Budget(max_tokens=2_000))
    async def wf(ctx: sw.Context) -> str:
        return await agent.run(ctx, "go")

    async with app:
        h = await app.start(wf)
        err = await _failure(app, h.run_id)
        report = await app.usage(h.run_id)
    turns = [c for c in report.calls if c.kind == "model"]
    assert err.budget == "max_tokens" and err.level == "workflow"
    assert report.total.tokens == err.used >= 2_000
    assert report.total.tokens - turns[-1].tokens < 2_000
    assert err.over < turns[-1].tokens


async def test_max_cost_stops_on_priced_spend(tmp_path: Path) -> None:
    """Four $0.25 turns reach max_cost=1.0; the fifth is never sent."""
    model = sw.SimulatedModel("m", script=priced)
    app = sw.Runtime(tmp_path / "j.db", models={"sim:m": model},
                     budget=sw.Budget(max_cost=1.0))
    agent = sw.Agent("spender", "sim:m", tools=[make_search([])], max_iterations=1000,
                     loop_limit=1000)

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await agent.run(ctx, "go")

    async with app:
        h = await app.start(wf)
        err = await _failure(app, h.run_id)
    assert model.statistics().calls == 4
    assert err.budget == "max_cost" and err.used == pytest.approx(1.0)


async def test_max_cost_refuses_a_model_without_a_price(tmp_path: Path) -> None:
    """Under max_cost, a model whose cost is unknown is not called as if it were free."""
    model = sw.SimulatedModel("m", script=["hi"])
    app = sw.Runtime(tmp_path / "j.db", models={"acme:m": model},
                     budget=sw.Budget(max_cost=1.0))
    model.provider = "acme"  # type: ignore[misc]
    agent = sw.Agent("a", "acme:m")

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await agent.run(ctx, "go")

    async with app:
        h = await app.start(wf)
        with pytest.raises(sw.RunFailedError, match="no price for acme:m"):
            await h.result()
        usage = await app.usage(h.run_id)
    assert model.statistics().calls == 0
    assert (usage.total.calls, usage.total.refused) == (0, 1)
    assert usage.by_model == {}  # refused before a model answered: no model's call


async def test_agent_budget_holds_one_agent_run(tmp_path: Path) -> None:
    """An agent's budget stops that agent; a run-level spend before it does not count."""
    model = sw.SimulatedModel("loop", script=forever)
    free = sw.SimulatedModel("free")
    app = sw.Runtime(tmp_path / "j.db", models={"sim:loop": model, "sim:free": free})
    warmup = sw.Agent("warmup", "sim:free")
    looper = sw.Agent("looper", "sim:loop", tools=[make_search([])], max_iterations=1000,
                      loop_limit=1000, budget=sw.Budget(max_steps=3))

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        for _ in range(3):
            await warmup.run(ctx, "hello")
        return await looper.run(ctx, "go")

    async with app:
        h = await app.start(wf)
        err = await _failure(app, h.run_id)
    assert err.level == "agent" and err.budget == "max_steps" and err.used == 3
    assert model.statistics().calls == 2
    assert "agent:looper budget" in str(err)


async def test_max_seconds_counts_from_the_run_creation_in_virtual_time() -> None:
    """10 s per model turn: a 35 s budget allows four turns, the call at 40 s is refused."""
    clock = sw.FakeClock(autojump=True)
    model = sw.SimulatedModel("slow", script=forever, clock=clock,
                              latency=sw.models.Latency.fixed(10.0))
    app = sw.Runtime(MemoryStore(), clock=clock, models={"sim:slow": model},
                     budget=sw.Budget(max_seconds=35))
    agent = sw.Agent("slow", "sim:slow", tools=[make_search([])], max_iterations=1000,
                     loop_limit=1000, policy=sw.Policy(timeout=None))

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await agent.run(ctx, "go")

    async with app:
        h = await app.start(wf)
        err = await _failure(app, h.run_id)
    assert model.statistics().calls == 4
    assert err.budget == "max_seconds" and err.used == pytest.approx(40.0)


async def test_totals_are_rebuilt_from_the_journal_after_a_restart(tmp_path: Path) -> None:
    """Spend before a park counts after the resume in a new process-like runtime."""
    script: list[Any] = [ToolCallRequest.create("c1", "search", {"q": "a"}), "first done"]
    tool_calls: list[str] = []

    def define(app: sw.Runtime) -> Any:
        first = sw.Agent("first", "sim:one", tools=[make_search(tool_calls)])
        second = sw.Agent("second", "sim:loop", tools=[make_search(tool_calls)],
                          max_iterations=1000, loop_limit=1000)

        @app.workflow(name="two_phases")
        async def wf(ctx: sw.Context) -> str:
            await first.run(ctx, "go")
            await ctx.sleep(0.2)
            return await second.run(ctx, "go on")

        return wf

    budget = sw.Budget(max_steps=5)
    one1, loop1 = sw.SimulatedModel("one", script=script), sw.SimulatedModel("loop",
                                                                              script=forever)
    app1 = sw.Runtime(tmp_path / "j.db", models={"sim:one": one1, "sim:loop": loop1},
                      budget=budget, park_after=0.0)
    wf = define(app1)
    async with app1:
        h = await app1.start(wf)
        for _ in range(1000):
            if (await app1.get_run(h.run_id)).status == sw.RunStatus.SLEEPING:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the run never parked in its sleep")
    assert one1.statistics().calls == 2 and len(tool_calls) == 1
    loop2 = sw.SimulatedModel("loop", script=forever)
    app2 = sw.Runtime(tmp_path / "j.db", models={"sim:one": sw.SimulatedModel("one"),
                                                 "sim:loop": loop2}, budget=budget)
    define(app2)
    async with app2:
        err = await _failure(app2, h.run_id)
    # 3 calls before the park; 2 more (a turn and its tool call) after it, then the stop.
    assert err.used == 5 and loop2.statistics().calls == 1 and len(tool_calls) == 2

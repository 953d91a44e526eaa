"""Prices, and tokens/calls/cost read from a run's journal."""

from __future__ import annotations

from pathlib import Path

import pytest

import stalwart as sw
from stalwart.models import ToolCallRequest


def test_price_table_matches_exact_dated_and_provider_wide_keys() -> None:
    """Exact key, then a dated snapshot of a known model, then ``provider:*``."""
    table = sw.PriceTable()
    assert table.price("openai", "gpt-4o") == sw.Price(2.50, 10.00)
    assert table.price("openai", "gpt-4o-2024-08-06") == sw.Price(2.50, 10.00)
    assert table.price("openai", "gpt-4o-mini-2024-07-18") == sw.Price(0.15, 0.60)
    assert table.price("sim", "anything") == sw.Price(0.0, 0.0)
    assert table.price("openai", "gpt-4omega") is None
    assert table.price("acme", "model-x") is None


def test_unknown_model_costs_none_and_sim_costs_zero() -> None:
    """An unpriced model's cost is unknown (None), never zero; sim is explicitly free."""
    table = sw.PriceTable()
    assert table.cost("acme", "model-x", 1000, 1000) is None
    assert table.cost("sim", "demo", 1000, 1000) == 0.0
    assert table.cost("openai", "gpt-4o", 1_000_000, 100_000) == pytest.approx(3.50)


def test_prices_are_overridable_by_mapping_and_by_function() -> None:
    """Overrides win over the built-in table; a lookup function is asked first."""
    table = sw.PriceTable({"acme:model-x": (1.0, 2.0), "openai:gpt-4o": sw.Price(1.0, 1.0)})
    assert table.cost("acme", "model-x", 1_000_000, 1_000_000) == pytest.approx(3.0)
    assert table.price("openai", "gpt-4o") == sw.Price(1.0, 1.0)
    by_fn = sw.PriceTable.of(lambda p, m: sw.Price(9.0, 9.0) if p == "acme" else None)
    assert by_fn.price("acme", "z") == sw.Price(9.0, 9.0)
    assert by_fn.price("openai", "gpt-4.1") == sw.Price(2.0, 8.0)
    bare = sw.PriceTable({"acme:y": (1.0, 1.0)}, defaults=False)
    assert bare.price("sim", "x") is None
    with pytest.raises(sw.ConfigurationError):
        sw.PriceTable({"no-provider": (1.0, 1.0)})
    with pytest.raises(sw.ConfigurationError):
        sw.Price(-1.0, 0.0)


def _priced(text: str, model: str, provider: str, tin: int, tout: int) -> sw.ModelResponse:
    return sw.ModelResponse(content=text, usage=sw.Usage(input_tokens=tin, output_tokens=tout),
                            model=model, provider=provider)


async def test_usage_report_per_run_agent_model_and_tool(tmp_path: Path) -> None:
    """Tokens, calls and cost per agent, model and tool, summed from the journal."""
    def lookup(city: str) -> str:
        return f"{city}: 21C"

    planner = sw.SimulatedModel("p", script=[
        ToolCallRequest.create("c1", "lookup", {"city": "Oslo"}),
        _priced("done", "gpt-4o", "openai", 1_000_000, 100_000)])
    writer = sw.SimulatedModel("w")
    app = sw.Runtime(tmp_path / "j.db", models={"sim:p": planner, "sim:w": writer})
    a = sw.Agent("planner", "sim:p", tools=[sw.Tool(lookup)])
    b = sw.Agent("writer", "sim:w")

    @app.workflow
    async def wf(ctx: sw.Context) -> int:
        r1 = await a.run_result(ctx, "plan")
        r2 = await b.run_result(ctx, "write")
        return r1.usage.total_tokens + r2.usage.total_tokens

    async with app:
        h = await app.start(wf)
        tokens = await h.result()
        report = await app.usage(h.run_id)
    assert report.total.tokens == tokens
    assert report.total.calls == 4  # three model turns and one tool call
    assert set(report.by_agent) == {"planner", "writer"}
    assert report.by_agent["planner"].calls == 2 and report.by_agent["writer"].calls == 1
    assert set(report.by_model) == {"sim:p", "openai:gpt-4o", "sim:w"}
    assert report.by_model["openai:gpt-4o"].cost == pytest.approx(3.50)
    assert report.by_model["sim:w"].cost == 0.0
    assert report.by_tool["tool:lookup"].calls == 1
    assert report.total.cost == pytest.approx(3.50)
    timed = [c for c in report.calls if c.duration is not None]
    assert len(timed) == 4 and all(c.started_at is not None for c in timed)


async def test_unknown_model_makes_the_total_unknown_not_zero(tmp_path: Path) -> None:
    """One unpriced call: the total cost is None; the priced part stays a lower bound."""
    model = sw.SimulatedModel("m", script=[_priced("a", "model-x", "acme", 10, 10),
                                           _priced("b", "gpt-4o", "openai", 1_000_000, 0)])
    app = sw.Runtime(tmp_path / "j.db", models={"sim:m": model})
    agent = sw.Agent("a", "sim:m")

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        await agent.run(ctx, "one")
        return await agent.run(ctx, "two")

    async with app:
        h = await app.start(wf)
        await h.result()
        report = await app.usage(h.run_id)
    assert report.by_model["acme:model-x"].cost is None
    assert report.total.cost is None
    assert report.total.unpriced_calls == 1
    assert report.total.priced_cost == pytest.approx(2.50)
    assert report.as_json()["total"]["cost"] is None

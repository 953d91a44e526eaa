"""Outcome checks: "HTTP 200 but wrong" is a failure for breakers and statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

import stalwart as sw
from stalwart.policies import BreakerState

BREAKER = sw.CircuitBreakerConfig(window_size=4, minimum_calls=4, wait_in_open=600)


class Answer(BaseModel):
    value: int


async def test_repeated_invalid_answers_open_the_models_breaker(tmp_path: Path) -> None:
    """Four answers that fail output_type: four semantic failures, and the breaker opens."""
    model = sw.SimulatedModel("wrong", script=lambda req: "not json at all")
    app = sw.Runtime(tmp_path / "j.db", models={"sim:wrong": model})
    agent = sw.Agent("typed", "sim:wrong", output_type=Answer, max_reasks=10,
                     policy=sw.Policy(retry=None, breaker=BREAKER))

    @app.workflow
    async def wf(ctx: sw.Context) -> int:
        return (await agent.run(ctx, "give me a number")).value

    async with app:
        h = await app.start(wf)
        with pytest.raises(sw.RunFailedError):
            await h.result()
        events = await app.events(h.run_id)
        report = await app.usage(h.run_id)
    assert app.breakers.statistics()["sim:wrong"].state is BreakerState.OPEN
    assert model.statistics().calls == 4  # the fifth turn was rejected by the breaker
    checks = [e for e in events if e.kind == "check_failed"]
    assert len(checks) == 4
    assert json.loads(checks[0].payload or "{}")["key"] == "sim:wrong"
    assert app.policy_counts["check_failed"] == 4
    errors = report.by_model["sim:wrong"].errors
    assert errors["semantic:OutcomeCheckError"] == 4
    assert errors["CircuitOpenError"] == 1


async def test_agent_check_predicate_re_asks_and_counts_the_wrong_answer(tmp_path: Path) -> None:
    """A user predicate on the output: the wrong answer is re-asked and journaled."""
    model = sw.SimulatedModel("m", script=["41", "42"])
    app = sw.Runtime(tmp_path / "j.db", models={"sim:m": model})
    agent = sw.Agent("answerer", "sim:m", check=lambda out: out == "42" or "not the answer")

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await agent.run(ctx, "the answer?")

    async with app:
        h = await app.start(wf)
        assert await h.result() == "42"
        events = await app.events(h.run_id)
    checks = [json.loads(e.payload or "{}") for e in events if e.kind == "check_failed"]
    assert [c["reason"] for c in checks] == ["the answer failed its check: not the answer"]
    assert "not the answer" in (model.requests[1].messages[-1].content or "")


async def test_replaying_a_checked_turn_does_not_count_it_again(tmp_path: Path) -> None:
    """A resumed run replays the wrong turn from the journal: no second check_failed."""
    model = sw.SimulatedModel("m", script=["41", "42"])
    app = sw.Runtime(tmp_path / "j.db", models={"sim:m": model}, park_after=0.0)
    agent = sw.Agent("answerer", "sim:m", check=lambda out: out == "42")

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        out = await agent.run(ctx, "the answer?")
        await ctx.sleep(0.05)  # parks: the rest is a replay
        return out

    async with app:
        h = await app.start(wf)
        assert await h.result() == "42"
        events = await app.events(h.run_id)
    assert sum(1 for e in events if e.kind == "check_failed") == 1
    assert sum(1 for e in events if e.kind == "run_claimed") == 2
    assert app.policy_counts["check_failed"] == 1


async def test_tool_check_fails_the_attempt_and_feeds_the_breaker(tmp_path: Path) -> None:
    """A tool result that fails its check is a failed attempt: retried, then accepted."""
    answers = iter([-1, -2, 7])
    attempts: list[int] = []

    def measure(call: sw.ToolCall) -> int:
        attempts.append(call.attempt)
        return next(answers)

    tool = sw.Tool(measure, policy=sw.Policy(
        retry=sw.Retry(max_attempts=5, initial=0.001, max_backoff=0.002),
        breaker=sw.CircuitBreakerConfig(window_size=10, minimum_calls=10)))
    app = sw.Runtime(tmp_path / "j.db")

    @app.workflow
    async def wf(ctx: sw.Context) -> int:
        return await ctx.tool(tool, check=lambda v: v >= 0)

    async with app:
        h = await app.start(wf)
        assert await h.result() == 7
        report = await app.usage(h.run_id)
    assert attempts == [1, 2, 3]
    stats = app.breakers.statistics()["tool:measure"]
    assert stats.failed_calls == 2
    assert report.by_tool["tool:measure"].errors == {"OutcomeCheckError": 2}


async def test_step_check_failure_is_a_recorded_outcome_check_error(tmp_path: Path) -> None:
    """ctx.step(check=...) that fails: the step fails with OutcomeCheckError, journaled."""
    app = sw.Runtime(tmp_path / "j.db")

    def compute() -> int:
        return 3

    @app.workflow
    async def wf(ctx: sw.Context) -> int:
        return await ctx.step(compute, check=lambda v: v % 2 == 0)

    async with app:
        h = await app.start(wf)
        with pytest.raises(sw.RunFailedError) as info:
            await h.result()
        events = await app.events(h.run_id)
    assert isinstance(info.value.__cause__, sw.OutcomeCheckError)
    assert info.value.__cause__.key.startswith("step:") and "compute" in info.value.__cause__.key
    failed = [e for e in events if e.kind == "step_failed"]
    assert json.loads(failed[0].payload or "{}")["type"].endswith("OutcomeCheckError")
    assert app.policy_counts["check_failed"] == 1

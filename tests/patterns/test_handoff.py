"""Handoffs with a state contract (sw.Team, sw.Handoff) on scripted models: what the
receiver sees, contract violations sent back to the sender, transforms, the journaled
handoff step, bounded chains, loops, and bad input."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pydantic import BaseModel

import stalwart as sw
from stalwart.store import EventKind
from stalwart.testing import MemoryStore

T0 = 1_700_000_000.0


class Case(BaseModel):
    customer_id: str
    issue: str
    summary: str = ""


def redact(text: str) -> str:
    return re.sub(r"[\w.]+@[\w.]+", "[email]", text)


GOOD = {"customer_id": "c-42", "issue": "double charge",
        "summary": "charged twice; reach me at ann@example.com"}


def call(name: str, args: dict[str, Any], n: int = 1) -> sw.ToolCallRequest:
    return sw.ToolCallRequest.create(f"call-{n}", name, args)


def tool_errors(request: sw.ModelRequest) -> list[dict[str, Any]]:
    return [json.loads(m.content or "{}")["error"] for m in request.messages
            if m.role == "tool"]


def make_team(triage_script: Any, billing_seen: list[sw.ModelRequest], **kw: Any) -> sw.Team:
    def billing_model(request: sw.ModelRequest) -> Any:
        billing_seen.append(request)
        return "refund issued"

    triage = sw.Agent("triage", sw.FunctionModel(triage_script, name="triage"),
                      instructions="Route the customer.")
    billing = sw.Agent("billing", sw.FunctionModel(billing_model, name="billing"))
    return sw.Team([triage, billing], [
        sw.Handoff("triage", "billing", contract=Case, local=("card_number",),
                   transform={"summary": redact}, description="Billing problems.")], **kw)


def make_app() -> sw.Runtime:
    return sw.Runtime(MemoryStore(), clock=sw.FakeClock(T0, autojump=True))


async def test_the_receiver_sees_only_the_contract_after_a_corrected_handoff() -> None:
    """The sender first hands off with a local field and without a canonical one: it is
    told why (handoff_refused, each problem) and corrects itself. The receiver's input
    is the contract alone, its summary transformed (redacted) on the way; nothing of
    the sender's conversation or local state reaches it. The handoff is one journaled
    step holding what transferred."""
    triage_seen: list[sw.ModelRequest] = []

    def triage(request: sw.ModelRequest) -> Any:
        triage_seen.append(request)
        if len(triage_seen) == 1:
            return call("transfer_to_billing", {"customer_id": "c-42",
                                                "card_number": "4111 1111 1111 1111"})
        return call("transfer_to_billing", GOOD, 2)

    billing_seen: list[sw.ModelRequest] = []
    team = make_team(triage, billing_seen)
    app = make_app()

    @app.workflow
    async def support(ctx: sw.Context, question: str) -> str:
        result = await team.run(ctx, question, start="triage")
        assert result.chain == ("triage", "billing")
        assert result.agent == "billing"
        return str(result.output)

    async with app:
        handle = await app.start(support, "card 4111 1111 1111 1111 charged twice")
        assert await handle.result() == "refund issued"
        events = await app.events(handle.run_id)

    [refusal] = tool_errors(triage_seen[1])
    assert refusal["type"] == "handoff_refused"
    assert refusal["problems"] == [
        "field 'card_number' is local to triage and must not be handed off",
        "field 'issue': Field required"]
    [seen] = billing_seen
    assert [m.role for m in seen.messages] == ["user"]
    assert json.loads(seen.messages[0].content or "") == {
        "customer_id": "c-42", "issue": "double charge",
        "summary": "charged twice; reach me at [email]"}
    everything = json.dumps([m.model_dump() for m in seen.messages])
    assert "4111" not in everything and "ann@example.com" not in everything
    [step] = [e for e in events if e.name == "handoff:triage->billing"
              and e.kind == EventKind.STEP_COMPLETED]
    assert json.loads(step.payload or "")["contract"]["summary"].endswith("[email]")
    assert [e.kind for e in events].count(EventKind.TOOL_CALL_REPAIRED) == 1


async def test_a_sender_that_keeps_breaking_the_contract_fails_the_run() -> None:
    """After max_reasks structured errors, the next broken handoff is
    HandoffContractError with the problems; the receiver never runs."""
    asked: list[int] = []

    def triage(request: sw.ModelRequest) -> Any:
        asked.append(len(tool_errors(request)))
        return call("transfer_to_billing", {"customer_id": 42}, len(request.messages))

    billing_seen: list[sw.ModelRequest] = []
    team = make_team(triage, billing_seen, max_reasks=1)
    app = make_app()

    @app.workflow
    async def support(ctx: sw.Context, question: str) -> str:
        return str((await team.run(ctx, question, start="triage")).output)

    async with app:
        handle = await app.start(support, "help")
        with pytest.raises(sw.RunFailedError) as info:
            await handle.result()
        events = await app.events(handle.run_id)
    assert info.value.error_type == "stalwart.errors.HandoffContractError"
    failed = json.loads(events[-1].payload or "{}")["attributes"]
    assert failed["problems"] == ["field 'customer_id': Input should be a valid string",
                                  "field 'issue': Field required"]
    assert failed["source"] == "triage" and failed["target"] == "billing"
    assert billing_seen == []
    assert asked == [0, 1]  # told once (max_reasks=1), then refused for good
    assert not [e for e in events if (e.name or "").startswith("handoff:")]


def ping_pong(vary: bool, **kw: Any) -> sw.Team:
    turns = {"a": 0, "b": 0}

    def model_for(me: str, other: str) -> Any:
        def fn(request: sw.ModelRequest) -> Any:
            turns[me] += 1
            issue = f"round {turns[me]}" if vary else "same"
            return call(f"transfer_to_{other}", {"customer_id": "c", "issue": issue})
        return fn

    a = sw.Agent("a", sw.FunctionModel(model_for("a", "b"), name="a"))
    b = sw.Agent("b", sw.FunctionModel(model_for("b", "a"), name="b"))
    return sw.Team([a, b], [sw.Handoff("a", "b", contract=Case),
                            sw.Handoff("b", "a", contract=Case)], **kw)


@pytest.mark.parametrize(("vary", "error", "handoffs"), [
    (False, "HandoffLoopError", 2),
    (True, "HandoffLimitError", 3),
])
async def test_chains_are_bounded_and_loops_detected(vary: bool, error: str,
                                                     handoffs: int) -> None:
    """a -> b -> a -> b with the same contract is a loop, refused at the repeat; with a
    new contract each time the chain stops at max_hops. Only the handoffs made before
    are journaled."""
    team = ping_pong(vary, max_hops=3)
    app = make_app()

    @app.workflow
    async def bounce(ctx: sw.Context) -> str:
        return str((await team.run(ctx, "go", start="a")).output)

    async with app:
        handle = await app.start(bounce)
        with pytest.raises(sw.RunFailedError) as info:
            await handle.result()
        events = await app.events(handle.run_id)
    assert info.value.error_type == f"stalwart.errors.{error}"
    steps = [e for e in events if (e.name or "").startswith("handoff:")]
    assert len(steps) == handoffs


def test_a_handoff_to_an_unknown_agent_is_refused_when_the_team_is_made() -> None:
    """A handoff naming an agent the team lacks, a field both local and canonical, a
    transform of no field, duplicate agents: ConfigurationError, naming it."""
    a = sw.Agent("a", "sim:a")
    b = sw.Agent("b", "sim:b")
    with pytest.raises(sw.ConfigurationError, match="unknown agent 'bilinq'"):
        sw.Team([a, b], [sw.Handoff("a", "bilinq", contract=Case)])
    with pytest.raises(sw.ConfigurationError, match="both local and in the contract"):
        sw.Team([a, b], [sw.Handoff("a", "b", contract=Case, local=("issue",))])
    with pytest.raises(sw.ConfigurationError, match="transform names"):
        sw.Team([a, b], [sw.Handoff("a", "b", contract=Case, transform={"x": str})])
    with pytest.raises(sw.ConfigurationError, match="two agents"):
        sw.Team([a, a], [])
    with pytest.raises(sw.ConfigurationError, match="max_hops"):
        sw.Team([a, b], [], max_hops=-1)


async def test_starting_at_an_unknown_agent_fails_before_any_call() -> None:
    """team.run(start=...) with no such agent: ConfigurationError, no model called."""
    team = ping_pong(False)
    app = make_app()

    @app.workflow
    async def nowhere(ctx: sw.Context) -> str:
        return str((await team.run(ctx, "go", start="zed")).output)

    async with app:
        handle = await app.start(nowhere)
        with pytest.raises(sw.RunFailedError) as info:
            await handle.result()
        events = await app.events(handle.run_id)
    assert info.value.error_type == "stalwart.errors.ConfigurationError"
    assert "no agent 'zed'" in str(info.value)
    assert not [e for e in events if e.kind == EventKind.STEP_COMPLETED]


async def test_sim_models_hand_off_on_the_real_stores(store_url: str) -> None:
    """Offline sim models fill the contract from its schema: the handoff is made and
    journaled on SQLite and PostgreSQL, and a replay of the run with the same code
    finds it deterministic (no model or transform runs again)."""
    transforms: list[str] = []

    def shout(text: str) -> str:
        transforms.append(text)
        return text.upper()

    triage = sw.Agent("triage", "sim:triage?tools=transfer_to_billing")
    billing = sw.Agent("billing", "sim:billing")
    team = sw.Team([triage, billing], [
        sw.Handoff("triage", "billing", contract=Case, transform={"issue": shout})])
    app = sw.Runtime(store_url)

    @app.workflow
    async def sim_support(ctx: sw.Context, question: str) -> list[str]:
        result = await team.run(ctx, question, start="triage")
        return list(result.chain)

    async with app:
        handle = await app.start(sim_support, "help")
        assert await handle.result() == ["triage", "billing"]
        report = await app.replay(handle.run_id)
    assert report.deterministic, report
    assert len(transforms) == 1

"""Tool calls whose arguments are too deep or too big go back to the model as
``invalid_json`` (the run goes on); the limits are the agent's, or the tool's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import stalwart as sw
from stalwart.models import ToolCallRequest

DEEP = "[" * 1000 + "]" * 1000


def call(arguments: str) -> ToolCallRequest:
    return ToolCallRequest(id="c1", name="store", arguments=arguments)


def nest(depth: int) -> str:
    return '{"data": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


async def _run(tmp_path: Path, bad: str, *, agent_kw: dict[str, int] | None = None,
               tool_kw: dict[str, int] | None = None) -> tuple[str, list[object], str]:
    """An agent whose model sends ``bad`` first, then a good call, then an answer:
    (the answer, what the tool received, the tool message the model got back)."""
    received: list[object] = []

    def store(data: object) -> str:
        received.append(data)
        return "stored"

    model = sw.SimulatedModel("test", script=[call(bad), call('{"data": 1}'), "done"])
    app = sw.Runtime(tmp_path / "j.db", models={"sim:test": model})
    agent = sw.Agent("a", "sim:test", tools=[sw.Tool(store, **(tool_kw or {}))],
                     **(agent_kw or {}))  # type: ignore[arg-type]

    @app.workflow
    async def wf(ctx: sw.Context) -> str:
        return await agent.run(ctx, "go")

    async with app:
        out = await app.run(wf)
    reply = model.requests[1].messages[-1]
    assert reply.role == "tool"
    return out, received, reply.content or ""


@pytest.mark.parametrize("bad", [DEEP, '{"data": ' + DEEP + "}",
                                 '{"data": "' + "x" * 1_100_000 + '"}'],
                         ids=["deep-array", "deep-in-object", "huge"])
async def test_arguments_over_the_default_limits_go_back_as_invalid_json(
        tmp_path: Path, bad: str) -> None:
    """A 1,000-deep or 1 MiB+ argument is a malformed call: the run completes."""
    out, received, reply = await _run(tmp_path, bad)
    assert out == "done"
    assert received == [1]  # only the good call reached the tool
    error = json.loads(reply)["error"]
    assert error["type"] == "invalid_json"
    assert "over the limit" in error["message"]


async def test_the_agent_sets_the_limits(tmp_path: Path) -> None:
    """Agent(max_argument_depth=3) refuses depth 4 that the default accepts."""
    _, received, reply = await _run(tmp_path, nest(4), agent_kw={"max_argument_depth": 3})
    assert received == [1] and "over the limit of 3" in reply


async def test_a_tool_sets_its_own_limits_over_the_agents(tmp_path: Path) -> None:
    """A tool's own limit wins over the agent's, up and down."""
    _, received, reply = await _run(tmp_path, '{"data": "0123456789"}',
                                    tool_kw={"max_argument_bytes": 12})
    assert received == [1] and "over the limit of 12" in reply
    _, received, _ = await _run(tmp_path / "up", nest(100),
                                tool_kw={"max_argument_depth": 200})
    assert len(received) == 2  # depth 100 reached the tool under its own limit


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "64"])
def test_limits_must_be_positive_ints(bad: object) -> None:
    """A limit that is not a positive int is a ConfigurationError where it is set."""
    with pytest.raises(sw.ConfigurationError):
        sw.Agent("a", "sim:x", max_argument_depth=bad)  # type: ignore[arg-type]
    with pytest.raises(sw.ConfigurationError):
        sw.Tool(lambda: None, max_argument_bytes=bad)  # type: ignore[arg-type]

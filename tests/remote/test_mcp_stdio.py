"""MCP over stdio against a real server from PyPI (``mcp-server-time``): its tools are
discovered with their schemas, called as journaled steps behind the policy stack, and
shown to an agent's model."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

import stalwart as sw
from stalwart.models import ModelRequest
from stalwart.store._base import EventKind
from stalwart.testing import MemoryStore

pytest.importorskip("mcp_server_time")

TIME = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]


async def test_tools_are_discovered_with_their_schemas() -> None:
    """Each tool of the server is a stalwart Tool with the server's input schema, the
    server's effect and scopes; a prefix namespaces the names."""
    async with sw.MCPServer.stdio(TIME, name="time", effect="read", scopes={"time:read"},
                                  prefix="clock") as server:
        names = sorted(t.name for t in server.tools)
        assert names == ["clock_convert_time", "clock_get_current_time"]
        tool = server.tool("clock_get_current_time")
        assert tool.spec.parameters["required"] == ["timezone"]
        assert (tool.effect, tool.scopes) == ("read", {"time:read"})
        assert server.source == "mcp:time"
        assert tool.origin == tool.description_origin == sw.Origin.mcp("time", "get_current_time")
        with pytest.raises(sw.ToolArgumentsError):
            tool.validate({"timezone": 3})
        with pytest.raises(sw.ToolArgumentsError):
            tool.validate({})
        await server.ping()


async def test_a_call_is_a_journaled_step_replayed_not_repeated() -> None:
    """ctx.tool with an MCP tool journals the structured result; an error result the
    tool reports is a RemoteToolError, journaled as the step's failure."""
    store = MemoryStore()
    async with sw.MCPServer.stdio(TIME, name="time") as server, sw.Runtime(store) as app:
        now = server.tool("get_current_time")

        @app.workflow
        async def clock(ctx: sw.Context, tz: str) -> dict[str, Any]:
            out = await ctx.tool(now, timezone=tz)
            try:
                await ctx.tool(now, timezone="Nowhere/Atlantis")
            except sw.RemoteToolError as exc:
                out["error"] = str(exc)
            return out  # type: ignore[no-any-return]

        result = await app.run(clock, "Europe/Paris", run_id="r1")
        assert result["timezone"] == "Europe/Paris"
        assert set(result) == {"timezone", "datetime", "day_of_week", "is_dst", "error"}
        assert "Invalid timezone" in result["error"]
        events = await store.load_events("r1")
        done = [e for e in events if e.kind == EventKind.STEP_COMPLETED]
        assert [e.name for e in done][:1] == ["tool:get_current_time"]
        assert json.loads(done[0].payload or "{}")["timezone"] == "Europe/Paris"
        assert server.statistics().calls == 2


async def test_an_agent_sees_and_calls_mcp_tools() -> None:
    """The model sees the MCP tool's schema, calls it, and reads the result."""
    seen: list[Any] = []

    def model(request: ModelRequest) -> Any:
        seen.append([t.name for t in request.tools])
        done = [m for m in request.messages if m.role == "tool"]
        if not done:
            return sw.ToolCallRequest.create("c1", "get_current_time", {"timezone": "UTC"})
        return "it is " + json.loads(done[0].content or "{}")["day_of_week"]

    async with sw.MCPServer.stdio(TIME, name="time") as server, \
            sw.Runtime(MemoryStore()) as app:
        agent = sw.Agent("clock", sw.FunctionModel(model), tools=server.tools)

        @app.workflow
        async def ask(ctx: sw.Context) -> str:
            return await agent.run(ctx, "what day is it?")

        answer = await app.run(ask)
        assert answer.startswith("it is ")
        assert seen[0] == ["get_current_time", "convert_time"]

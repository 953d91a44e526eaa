"""The tool registry: health checks (local ``health=`` functions, MCP ping), run
periodically on the runtime's clock and after failures; unhealthy tools leave the
model's tool list, with the model told why, until they recover; per-tool breakers and
bulkheads; duplicate names refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import stalwart as sw
from stalwart.models import ModelRequest
from stalwart.testing import MemoryStore

from .conftest import server_argv


def _tools(app: sw.Runtime, up: dict[str, bool], executed: list[str],
           registry: sw.ToolRegistry) -> None:
    @app.tool(effect="read")
    def lookup(q: str) -> str:
        """Look something up."""
        executed.append(f"lookup:{q}")
        return f"found {q}"

    @app.tool(effect="write")
    async def toggle(on: bool) -> str:
        """Switch the lookup service (the test's way of making it fail and recover)."""
        executed.append(f"toggle:{on}")
        up["lookup"] = on
        await registry.check()
        return "ok"

    registry.add(lookup, health=lambda: up["lookup"] or "the index is rebuilding")
    registry.add(toggle)


async def test_an_unhealthy_tool_leaves_the_models_list_until_it_recovers() -> None:
    """Turn 1 offers both tools; the lookup goes down: turn 2 offers only toggle and
    says why; a call to lookup anyway is refused (tool_unavailable), not executed; it
    recovers: turn 3 offers it again and says so. A replay sees the same turns."""
    up = {"lookup": True}
    executed: list[str] = []
    offered: list[list[str]] = []
    notes: list[str] = []

    def model(request: ModelRequest) -> Any:
        offered.append([t.name for t in request.tools])
        notes.extend(m.content or "" for m in request.messages
                     if m.role == "user" and "The tool" in (m.content or ""))
        turn = len(offered)
        if turn == 1:
            return sw.ToolCallRequest.create("c1", "toggle", {"on": False})
        if turn == 2:
            return [sw.ToolCallRequest.create("c2", "lookup", {"q": "x"}),
                    sw.ToolCallRequest.create("c3", "toggle", {"on": True})]
        if turn == 3:
            return sw.ToolCallRequest.create("c4", "lookup", {"q": "y"})
        return "done"

    store = MemoryStore()
    async with sw.Runtime(store) as app:
        registry = sw.ToolRegistry(app)
        _tools(app, up, executed, registry)
        agent = sw.Agent("a", sw.FunctionModel(model), tools=registry.tools,
                         health=registry)

        @app.workflow
        async def wf(ctx: sw.Context) -> sw.AgentResult[str]:
            return await agent.run_result(ctx, "go")

        result = await app.run(wf, run_id="h1")
    assert offered == [["lookup", "toggle"], ["toggle"], ["lookup", "toggle"],
                       ["lookup", "toggle"]]
    assert notes[0] == ("The tool lookup is unavailable now (the index is rebuilding); "
                        "do not call it.")
    assert notes[-1] == "The tool lookup is available again."
    assert executed == ["toggle:False", "toggle:True", "lookup:y"]
    refused = [m.content for m in result.messages if m.role == "tool"
               and "tool_unavailable" in (m.content or "")]
    assert len(refused) == 1 and "the index is rebuilding" in (refused[0] or "")


async def test_periodic_checks_on_the_runtimes_clock() -> None:
    """start() checks at once and every interval of the injected clock; a failing or
    raising check is the reason; statistics() shows source, effect, scopes, health."""
    clock = sw.FakeClock()
    state = {"ok": True}

    def flaky() -> bool:
        if not state["ok"]:
            raise ConnectionError("index unreachable")
        return True

    async with sw.Runtime(MemoryStore(), clock=clock) as app:
        registry = sw.ToolRegistry(app, interval=60)

        @app.tool(effect="read", scopes={"kb:read"})
        def search(q: str) -> str:
            return q

        registry.add(search, health=flaky)
        async with registry:
            await _until(lambda: registry.checks == 1)
            state["ok"] = False
            await clock.advance(59)
            assert registry.checks == 1
            await clock.advance(1)
            await _until(lambda: registry.checks == 2)
            [status] = registry.statistics()
            assert (status.name, status.source, status.effect, status.scopes) == (
                "search", "local", "read", ("kb:read",))
            assert not status.healthy and not status.available
            assert status.reason == "ConnectionError: index unreachable"
            assert status.checked_at == clock.now()
            assert registry.unavailable(["search", "other"]) == {
                "search": "ConnectionError: index unreachable"}


async def _until(cond: Any) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0)  # let the checker's task run: no time passes
    raise AssertionError("condition never held")


async def _until_answered(cond: Any, timeout: float = 30.0) -> None:
    """Wait for ``cond`` where real I/O must happen first (an MCP server's ping over
    its pipes): poll, bounded in real time. Turns of the loop alone are not enough on
    a loaded machine (CI failed on 1,000 of them)."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def test_breakers_and_bulkheads_per_tool() -> None:
    """A tool without a policy takes the registry's (its own breaker and bulkhead); a
    tool whose breaker opened after failures is unavailable, the others are not."""
    async with sw.Runtime(MemoryStore()) as app:
        registry = sw.ToolRegistry(app)
        policy = sw.Policy(retry=None, breaker=sw.CircuitBreakerConfig(
            failure_rate_threshold=50, minimum_calls=2, window_size=2))

        @app.tool(policy=policy)
        def broken() -> str:
            raise RuntimeError("down")

        @app.tool
        def fine() -> str:
            return "ok"

        registry.add(broken)
        registry.add(fine)
        assert fine.policy is sw.remote.DEFAULT_TOOL_POLICY and broken.policy is policy

        @app.workflow
        async def wf(ctx: sw.Context) -> list[str]:
            out = []
            for _ in range(3):
                try:
                    await ctx.tool(broken)
                except sw.StalwartError as exc:
                    out.append(type(exc).__name__)
                except RuntimeError:
                    out.append("RuntimeError")
            out.append(await ctx.tool(fine))
            return out

        assert (await app.run(wf))[-1] == "ok"
        assert registry.unavailable(["broken", "fine"]) == {
            "broken": "its circuit breaker is open after failures"}
        by_name = {s.name: s for s in registry.statistics()}
        assert by_name["broken"].breaker == "open" and by_name["fine"].breaker == "closed"


async def test_mcp_tools_health_follows_the_server(state: Path) -> None:
    """A server's ping is its tools' check; a lost connection makes them unhealthy at
    once; the next check restarts the server and they are healthy again."""
    async with sw.Runtime(MemoryStore()) as app:
        registry = sw.ToolRegistry(app)
        registry.add_server(sw.MCPServer.stdio(server_argv(state), name="faulty"))
        async with registry:
            names = {t.name for t in registry.tools}
            assert {"echo", "die_once"} <= names
            await _until_answered(lambda: registry.checks >= 1)
            with pytest.raises(sw.ToolServerUnavailableError):
                await registry.tools[[t.name for t in registry.tools].index("die_once")].fn(
                    {"tag": "z"}, None)
            down = registry.unavailable(["echo"])
            assert down["echo"].startswith("server unavailable: ")
            await registry.check()
            assert registry.unavailable(["echo"]) == {}
            assert all(s.source == "mcp:faulty" for s in registry.statistics())


async def test_duplicate_tool_names_are_refused(state: Path) -> None:
    """Two servers with the same tools: DuplicateToolError naming both sources (and
    nothing of the second registered); with a prefix they live side by side."""
    async with sw.Runtime(MemoryStore()) as app:
        registry = sw.ToolRegistry(app)
        registry.add_server(sw.MCPServer.stdio(server_argv(state), name="one"))
        registry.add_server(sw.MCPServer.stdio(server_argv(state), name="two"))
        with pytest.raises(sw.DuplicateToolError, match="from mcp:two is registered "
                           "already from mcp:one") as info:
            await registry.connect()
        assert info.value.sources == ["mcp:one", "mcp:two"]
        count = len(registry.tools)
        registry.add_server(sw.MCPServer.stdio(server_argv(state), name="three",
                                               prefix="three"))
        await registry.connect()
        assert len(registry.tools) == 2 * count
        assert "three_echo" in {t.name for t in registry.tools}
        await registry.close()

        def f() -> None: ...
        registry.add(sw.Tool(f, name="echo_local"))
        with pytest.raises(sw.DuplicateToolError):
            registry.add(sw.Tool(f, name="echo"))

"""MCP over streamable HTTP against a FastMCP server on 127.0.0.1 with faults: slow
(cut by the policy's timeout), crashing (reconnected under Retry once it is back),
malformed results (ToolResultError), and the journal intact through all of it."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

import stalwart as sw
from stalwart.store._base import EventKind
from stalwart.testing import MemoryStore

from .conftest import HTTPServer, calls

pytestmark = pytest.mark.slow


async def test_discovery_and_calls_over_http(http_server: HTTPServer) -> None:
    """The tools are listed with their schemas and called as journaled steps, the
    idempotency key in ``_meta``; ping and list_tools answer (the health checks)."""
    store = MemoryStore()
    async with sw.MCPServer.http(http_server.url, name="faulty", prefix="f") as server, \
            sw.Runtime(store) as app:
        assert server.tool("f_add").spec.parameters["required"] == ["a", "b"]
        add = server.tool("f_add")

        @app.workflow
        async def sums(ctx: sw.Context) -> int:
            out = await ctx.tool(add, a=2, b=3)
            return int(out["sum"])

        assert await app.run(sums, run_id="s1") == 5
        [call] = calls(http_server.state, "add")
        assert call["key"].startswith("s1:")
        await server.ping()
        assert "add" in await server.list_tool_names()


async def test_the_servers_headers_reach_it(http_server: HTTPServer) -> None:
    """The headers given to MCPServer.http are sent with every request (on the HTTP
    client stalwart builds for the SDK's transport)."""
    async with sw.MCPServer.http(http_server.url, name="faulty", prefix="f",
                                 headers={"X-Test-Token": "t0k"}) as server, \
            sw.Runtime(MemoryStore()) as app:
        echo = server.tool("f_echo")

        @app.workflow
        async def say(ctx: sw.Context) -> str:
            return str((await ctx.tool(echo, text="hi"))["result"])

        assert await app.run(say, run_id="h1") == "hi"
    assert [c["token"] for c in calls(http_server.state, "echo")] == ["t0k"]


async def test_a_slow_server_is_cut_by_the_timeout(http_server: HTTPServer) -> None:
    """Timeout.per_attempt cuts a call that takes too long (CallTimeoutError, journaled);
    the session stays usable for the next call."""
    store = MemoryStore()
    policy = sw.Policy(timeout=sw.Timeout(per_attempt=timedelta(milliseconds=300)),
                       retry=None)
    async with sw.MCPServer.http(http_server.url, name="faulty") as server, \
            sw.Runtime(store) as app:
        slow, echo = server.tool("slow"), server.tool("echo")

        @app.workflow
        async def wf(ctx: sw.Context) -> str:
            with pytest.raises((sw.CallTimeoutError, sw.RetryExhaustedError)):
                await ctx.tool(slow, seconds=5, policy=policy)
            out = await ctx.tool(echo, text="after")
            return str(out["result"])

        assert await app.run(wf, run_id="t1") == "after"
        failed = [e for e in await store.load_events("t1") if e.kind == EventKind.STEP_FAILED]
        assert len(failed) == 1 and "CallTimeoutError" in (failed[0].payload or "")


async def test_a_crashing_server_is_reconnected_under_retry(http_server: HTTPServer) -> None:
    """The server dies during a call; its supervisor (here, the test) starts it again;
    Retry's next attempts reconnect and the call answers. Each failed attempt is
    journaled as ToolServerUnavailableError."""
    store = MemoryStore()
    retry = sw.Policy(retry=sw.Retry(max_attempts=10, initial=0.2, multiplier=1.5,
                                     jitter="none"))
    assert http_server.proc is not None
    first = http_server.proc

    async def supervise() -> None:
        await asyncio.to_thread(first.wait)
        await asyncio.to_thread(http_server.start)

    async with sw.MCPServer.http(http_server.url, name="faulty", policy=retry) as server, \
            sw.Runtime(store) as app:
        die = server.tool("die_once")

        @app.workflow
        async def wf(ctx: sw.Context) -> str:
            out = await ctx.tool(die, tag="h1")
            return str(out["result"])

        supervisor = asyncio.create_task(supervise())
        assert await app.run(wf, run_id="d1") == "survived h1"
        await supervisor
        assert server.statistics().connects >= 2
        failed = [json.loads(e.payload or "{}") for e in await store.load_events("d1")
                  if e.kind == EventKind.ATTEMPT_FAILED]
        assert failed and all(f["error"]["type"].endswith("ToolServerUnavailableError")
                              for f in failed)
        assert len(calls(http_server.state, "die_once")) == 2


async def test_malformed_results_over_http(http_server: HTTPServer) -> None:
    """A result not matching the declared output schema: ToolResultError, retried as
    the policy says (each attempt journaled), then the step fails with it."""
    store = MemoryStore()
    retry = sw.Policy(retry=sw.Retry(max_attempts=2, initial=0.01))
    async with sw.MCPServer.http(http_server.url, name="faulty", policy=retry) as server, \
            sw.Runtime(store) as app:
        bad = server.tool("malformed")

        @app.workflow
        async def wf(ctx: sw.Context) -> str:
            try:
                await ctx.tool(bad)
            except sw.RetryExhaustedError as exc:
                return f"{type(exc.__cause__).__name__}: {exc.__cause__}"
            return "no error"

        out = await app.run(wf, run_id="b1")
        assert out.startswith("ToolResultError: ") and "does not match its output schema" in out
        assert len(calls(http_server.state, "malformed")) == 2

"""MCP faults over stdio: a server that dies is restarted under the policy stack, the
idempotency key reaches the server in ``_meta``, and bad input (an output not matching
its schema, a schema that is not JSON Schema, an unreachable server) is one typed error
each, with the journal intact."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import pytest

import stalwart as sw
from stalwart.store._base import EventKind
from stalwart.testing import MemoryStore

from .conftest import calls, server_argv

RETRY = sw.Policy(retry=sw.Retry(max_attempts=3, initial=timedelta(milliseconds=10)))


async def test_the_idempotency_key_travels_in_meta(state: Path) -> None:
    """The server receives ``stalwart/idempotency_key`` = ``run_id:step_id`` in the
    request's ``_meta``; a replayed run does not call again."""
    store = MemoryStore()
    async with sw.MCPServer.stdio(server_argv(state), name="faulty") as server, \
            sw.Runtime(store) as app:
        charge = server.tool("charge")

        @app.workflow
        async def pay(ctx: sw.Context) -> str:
            out = await ctx.tool(charge, amount=5)  # FastMCP wraps a str: {"result": s}
            return str(out["result"])

        out = await app.run(pay, run_id="pay-1")
        [call] = calls(state, "charge")
        assert call["key"].startswith("pay-1:") and out.endswith(call["key"])
        assert await app.run(pay, run_id="pay-1") == out  # the same run: its result
        assert len(calls(state, "charge")) == 1


async def test_a_dying_server_is_restarted_under_retry(state: Path) -> None:
    """The server dies during a call: the attempt fails ToolServerUnavailableError
    (journaled), Retry tries again, the server is restarted and answers."""
    store = MemoryStore()
    async with sw.MCPServer.stdio(server_argv(state), name="faulty", policy=RETRY) as server, \
            sw.Runtime(store) as app:
        die = server.tool("die_once")

        @app.workflow
        async def flaky(ctx: sw.Context) -> dict[str, str]:
            return await ctx.tool(die, tag="t1")  # type: ignore[no-any-return]

        assert await app.run(flaky, run_id="f1") == {"result": "survived t1"}
        assert len({c["pid"] for c in calls(state, "die_once")}) == 2  # restarted
        assert server.statistics().connects == 2
        failed = [json.loads(e.payload or "{}") for e in await store.load_events("f1")
                  if e.kind == EventKind.ATTEMPT_FAILED]
        assert [f["error"]["type"].rsplit(".", 1)[-1] for f in failed] == [
            "ToolServerUnavailableError"]


async def test_a_result_not_matching_its_output_schema(state: Path) -> None:
    """ToolResultError, naming what is wrong; the step's failure is journaled and the
    run fails with it (retries exhausted), nothing else."""
    store = MemoryStore()
    async with sw.MCPServer.stdio(server_argv(state), name="faulty") as server, \
            sw.Runtime(store) as app:
        bad = server.tool("malformed")

        @app.workflow
        async def wf(ctx: sw.Context) -> object:
            return await ctx.tool(bad, policy=sw.Policy(retry=None))

        with pytest.raises(sw.RunFailedError) as info:
            await app.run(wf, run_id="m1")
        cause = info.value.__cause__
        assert isinstance(cause, sw.ToolResultError | sw.RetryExhaustedError)
        assert "'total' is a required property" in str(info.value)
        kinds = [e.kind for e in await store.load_events("m1")]
        assert EventKind.STEP_FAILED in kinds  # retries spent: the run is dead-lettered
        assert kinds[-1] in (EventKind.RUN_FAILED, EventKind.RUN_DEAD_LETTERED)


async def test_a_schema_that_is_not_json_schema(state: Path) -> None:
    """ToolSchemaError at connect, naming the tool, the server and where; the server
    process is not left running."""
    server = sw.MCPServer.stdio(server_argv(state, "--bad-schema"), name="faulty")
    with pytest.raises(sw.ToolSchemaError, match=r"tool 'echo' of MCP server 'faulty'.*"
                       r"properties/text/type") as info:
        await server.connect()
    assert (info.value.tool, info.value.server) == ("echo", "faulty")
    assert not server.statistics().connected
    with pytest.raises(sw.ToolSchemaError, match="not valid JSON Schema"):
        sw.Tool(lambda arguments: None, name="t",
                parameters={"type": "object", "required": "x"})
    with pytest.raises(sw.ToolSchemaError, match="must describe an object"):
        sw.Tool(lambda arguments: None, name="t", parameters={"type": "string"})


async def test_an_unreachable_server_at_start() -> None:
    """ToolServerUnavailableError (retryable) for a command that does not exist, one
    that exits at once, and an HTTP port nobody listens on."""
    for server in (sw.MCPServer.stdio(["/nonexistent/mcp-server"], name="a"),
                   sw.MCPServer.stdio([sys.executable, "-c", "pass"], name="b"),
                   sw.MCPServer.http("http://127.0.0.1:9/mcp", name="c")):
        with pytest.raises(sw.ToolServerUnavailableError, match="cannot be reached") as info:
            await server.connect()
        assert info.value.retryable and info.value.server == server.name


def test_bad_configuration() -> None:
    """A command that is no argv, a URL that is no URL, an unknown effect."""
    with pytest.raises(sw.ConfigurationError, match="non-empty argv"):
        sw.MCPServer.stdio([])
    with pytest.raises(sw.ConfigurationError, match="http"):
        sw.MCPServer.http("ftp://x")
    with pytest.raises(sw.ConfigurationError, match="effect"):
        sw.MCPServer.stdio(["x"], effect="root")  # type: ignore[arg-type]
    with pytest.raises(sw.ConfigurationError, match="connect"):
        _ = sw.MCPServer.stdio(["x"]).tools

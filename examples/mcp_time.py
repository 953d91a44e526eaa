"""MCP tools: an agent that asks a real MCP server (``mcp-server-time``) what time it is.

The server is started over stdio; its tools are discovered with their schemas and given
to an agent whose model (offline: a function) calls one. The call is a journaled step
behind the policy stack: run the example twice and the second run reads the journal
instead of asking the server again. Needs the mcp extra and the server:
``pip install -e '.[mcp]' mcp-server-time`` in the checkout.

    python examples/mcp_time.py
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import stalwart as sw

app = sw.Runtime()  # the journal: ./.stalwart/stalwart.db (or $STALWART_STORE)
TIME = sw.MCPServer.stdio([sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"],
                          name="time", effect="read", scopes={"time:read"})


def clock_model(request: sw.ModelRequest) -> Any:
    """Asks for Tokyo's time, then answers with the day of the week it got."""
    done = [m for m in request.messages if m.role == "tool"]
    if not done:
        return sw.ToolCallRequest.create("c1", "get_current_time", {"timezone": "Asia/Tokyo"})
    answer = json.loads(done[0].content or "{}")
    return f"In {answer['timezone']} it is {answer['day_of_week']}."


@app.workflow(name="tokyo_day")
async def tokyo_day(ctx: sw.Context) -> str:
    agent = sw.Agent("clock", sw.FunctionModel(clock_model), tools=TIME.tools,
                     grant=sw.Grant(effects={"read"}, scopes={"time:*"}))
    return await agent.run(ctx, "What day is it in Tokyo?")


async def main() -> None:
    async with TIME, app:
        print("tools:", ", ".join(sorted(t.name for t in TIME.tools)))
        answer = await app.run(tokyo_day, run_id="tokyo-day")
        print(answer)
        print("calls sent to the server:", TIME.statistics().calls)


if __name__ == "__main__":
    asyncio.run(main())

"""A workflow over the MCP test server, run in a process a test SIGKILLs.

    python mcp_crash_app.py DB URL

charge (an effect) then hold (the test kills this process while it waits); prints the
run's result as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import stalwart as sw

DB, URL = sys.argv[1], sys.argv[2]
app = sw.Runtime(DB, lease_seconds=2.0)
SERVER = sw.MCPServer.http(URL, name="faulty")


@app.workflow(name="pay_then_hold")
async def pay_then_hold(ctx: sw.Context) -> dict[str, Any]:
    charged = await ctx.tool(SERVER.tool("charge"), amount=7)
    held = await ctx.tool(SERVER.tool("hold"), tag="h")
    return {"charged": charged["result"], "held": held["result"]}


async def main() -> None:
    async with SERVER, app:
        print(json.dumps(await app.run(pay_then_hold, run_id="crash-1")))


if __name__ == "__main__":
    asyncio.run(main())

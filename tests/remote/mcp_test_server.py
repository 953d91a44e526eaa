"""An MCP server with faults, built with the SDK's MCPServer (FastMCP), for the tests.

    python mcp_test_server.py STATE_DIR [--http PORT] [--bad-schema]

Every call is appended to STATE_DIR/calls.jsonl with the idempotency key stalwart sent
in ``_meta`` (and, over HTTP, the ``X-Test-Token`` header), so a test counts the calls
the server received. Tools:

* ``echo(text)``; ``add(a, b)`` (structured output);
* ``die_once(tag)``: the first call with a tag kills the server (exit 3), later ones
  answer;
* ``slow(seconds)``: answers after a while;
* ``malformed()``: a result that does not match the output schema it declares;
* ``charge(amount)``: an effect deduplicated by idempotency key (STATE_DIR/charges.json);
* ``hold(tag)``: answers once STATE_DIR/release-<tag> exists (writes started-<tag> first).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

STATE = Path(sys.argv[1])
app = MCPServer("faulty", log_level="WARNING")


def _record(tool: str, ctx: Context) -> str:
    meta = ctx.request_context.meta
    extra = getattr(meta, "model_extra", None) or {}
    if isinstance(meta, dict):
        extra = meta
    key = str(extra.get("stalwart/idempotency_key", ""))
    request = ctx.request_context.request  # the HTTP request (None over stdio)
    token = request.headers.get("x-test-token") if request is not None else None
    with (STATE / "calls.jsonl").open("a") as f:
        f.write(json.dumps({"tool": tool, "key": key, "pid": os.getpid(),
                            "token": token}) + "\n")
    return key


@app.tool()
def echo(text: str, ctx: Context) -> str:
    """Say it back."""
    _record("echo", ctx)
    return text


@app.tool()
def add(a: int, b: int, ctx: Context) -> dict[str, int]:
    """Add two numbers."""
    _record("add", ctx)
    return {"sum": a + b}


@app.tool()
def die_once(tag: str, ctx: Context) -> str:
    """Kill the server the first time a tag is seen."""
    _record("die_once", ctx)
    marker = STATE / f"died-{tag}"
    if not marker.exists():
        marker.write_text("x")
        os._exit(3)
    return f"survived {tag}"


@app.tool()
def slow(seconds: float, ctx: Context) -> str:
    """Answer after a while."""
    _record("slow", ctx)
    time.sleep(seconds)
    return "slept"


@app.tool()
def malformed(ctx: Context) -> dict[str, int]:
    """A result that does not match its declared output schema."""
    _record("malformed", ctx)
    return {"sum": 1}


@app.tool()
def charge(amount: int, ctx: Context) -> str:
    """Charge once per idempotency key."""
    key = _record("charge", ctx)
    path = STATE / "charges.json"
    charges: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if key not in charges:
        charges[key] = amount
        path.write_text(json.dumps(charges))
    return f"charged {charges[key]} once for {key}"


@app.tool()
def hold(tag: str, ctx: Context) -> str:
    """Answer once the test releases the tag."""
    _record("hold", ctx)
    (STATE / f"started-{tag}").write_text(str(os.getpid()))
    while not (STATE / f"release-{tag}").exists():
        time.sleep(0.02)
    return f"released {tag}"


def _patch() -> None:
    tools = app._tool_manager  # a test server: declared schemas are changed in place
    bad = tools.get_tool("malformed")
    assert bad is not None
    bad.fn_metadata.output_schema = {
        "type": "object", "required": ["total"],
        "properties": {"total": {"type": "string"}}}
    if "--bad-schema" in sys.argv:
        echo_tool = tools.get_tool("echo")
        assert echo_tool is not None
        echo_tool.parameters = {"type": "object",
                                "properties": {"text": {"type": "no-such-type"}}}


if __name__ == "__main__":
    _patch()
    if "--http" in sys.argv:
        import uvicorn

        port = int(sys.argv[sys.argv.index("--http") + 1])
        uvicorn.run(app.streamable_http_app(), host="127.0.0.1", port=port,
                    log_level="warning")
    else:
        app.run()

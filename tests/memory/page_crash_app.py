"""A reading agent under Page, run in a child process by test_page_crash.py.

    python page_crash_app.py DB [crash]

With ``crash``, the process SIGKILLs itself right after its first write to warm memory:
the page step's entry is in the store, the step's completion is not journaled."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import stalwart as sw
from stalwart.models import ModelRequest, ToolCallRequest
from stalwart.store import SQLiteStore
from stalwart.store._board import BoardEntry, BoardOp

BIG = "lorem ipsum dolor sit amet " * 60
FACT = "The vault code is 7341."


def reader(request: ModelRequest) -> object:
    """Stateless (the process restarts): the next page after the last one read; after
    page 7, recall the vault code; then answer with what recall said."""
    last = request.messages[-1]
    if last.role == "tool" and last.name == "recall":
        return "answer: " + (last.content or "")
    if last.role == "tool" and last.name == "fetch":
        n = int((last.content or "").split(":")[0].split()[1])
        if n >= 7:
            return ToolCallRequest.create("r1", "recall", {"query": "vault code"})
        return ToolCallRequest.create(f"c{n + 1}", "fetch", {"page": n + 1})
    return ToolCallRequest.create("c0", "fetch", {"page": 0})


async def fetch(page: int) -> str:
    return f"page {page}: {FACT if page == 0 else ''} {BIG}"


agent = sw.Agent("reader", sw.FunctionModel(reader, name="reader"), tools=[sw.Tool(fetch)],
                 instructions="Read the pages.", max_iterations=30,
                 context=sw.ContextWindow(1_500, reserve_output=200, policy=sw.Page()))


def arm_crash() -> None:
    original = SQLiteStore.board_apply

    async def write_then_die(self: SQLiteStore, op: BoardOp, *, now: float,
                             ) -> BoardEntry | None:
        out = await original(self, op, now=now)
        if op.board.startswith("memory:"):
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    SQLiteStore.board_apply = write_then_die  # type: ignore[method-assign]


async def main(db: str, crash: bool) -> None:
    if crash:
        arm_crash()
    app = sw.Runtime(db)

    @app.workflow(name="read")
    async def read(ctx: sw.Context) -> Any:
        return await agent.run(ctx, "read every page")

    async with app:
        handle = await app.start(read, run_id="r1")
        print(json.dumps(await handle.result()))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:] == ["crash"]))

"""A reading agent under Summarize, run in a child process by test_summarize_crash.py.

    python summarize_crash_app.py DB STATE [summary|turn]

Each summarizer call is appended to STATE/summaries.jsonl (its span's first line), so
the test counts the calls across processes; the last request of the finished run is
written to STATE/final.json. A gate stops the process where the test kills it, and
says so with a file, first writing it:

* ``summary``: the first summarizer call writes STATE/gated and never answers (the
  summary step is in flight);
* ``turn``: the first model turn whose request holds a summary writes STATE/gated and
  never answers (the summary step's completion is journaled, the next turn is not).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import stalwart as sw
from stalwart.models import ModelRequest, ToolCallRequest

DB, STATE = sys.argv[1], Path(sys.argv[2])
GATE = sys.argv[3] if len(sys.argv) > 3 else None
BIG = "lorem ipsum dolor sit amet " * 60
SUMMARY = "[Summary of earlier conversation"


async def gate() -> None:
    (STATE / "gated").write_text("")
    await asyncio.Event().wait()  # never answers: the test SIGKILLs this process


async def reader(request: ModelRequest) -> object:
    """Stateless (the process restarts): summarizes deterministically; otherwise reads
    the page after the last one read, and after page 7 answers."""
    if request.messages[0].content == sw.Summarize().instructions:
        span = request.messages[1].content or ""
        with (STATE / "summaries.jsonl").open("a") as f:
            f.write(json.dumps(span.splitlines()[0][:60]) + "\n")
        if GATE == "summary":
            await gate()
        return f"{span.count('page ')} pages read; the code word is MAGENTA"
    if GATE == "turn" and any((m.content or "").startswith(SUMMARY)
                              for m in request.messages):
        await gate()
    last = request.messages[-1]
    if last.role == "tool":
        n = int((last.content or "").split(":")[0].split()[1])
        if n < 7:
            return ToolCallRequest.create(f"c{n + 1}", "fetch", {"page": n + 1})
        (STATE / "final.json").write_text(json.dumps(
            [[m.role, m.content] for m in request.messages]))
        return "done"
    return ToolCallRequest.create("c0", "fetch", {"page": 0})


async def fetch(page: int) -> str:
    return f"page {page}: {BIG}"


agent = sw.Agent("reader", sw.FunctionModel(reader, name="reader"), tools=[sw.Tool(fetch)],
                 instructions="Read the pages.", max_iterations=30,
                 context=sw.ContextWindow(1_500, reserve_output=200,
                                          policy=sw.Summarize(max_summary_tokens=64)))


async def main() -> None:
    app = sw.Runtime(DB)

    @app.workflow(name="read")
    async def read(ctx: sw.Context) -> Any:
        return await agent.run(ctx, "read every page")

    async with app:
        handle = await app.start(read, run_id="r1", if_exists="return")
        print(json.dumps(await handle.result()))


if __name__ == "__main__":
    asyncio.run(main())

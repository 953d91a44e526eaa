"""A state graph: research in parallel, write, critique, revise until good enough.

The graph fans out to two research nodes that run side by side, joins them, then loops
between a writer (a model call, offline on ``sim:``) and a critic until the critic is
satisfied or three drafts were written. Every node is a journaled step, and the journal
holds each node's *delta* (the notes it added, the draft it wrote), never the whole
state: kill the process anywhere and ``stalwart resume`` finishes it from there.

    python examples/graph_agent.py
"""

from __future__ import annotations

import asyncio
import json
import operator
from typing import Annotated, Any, Literal

from pydantic import BaseModel

import stalwart as sw

app = sw.Runtime()  # the journal: ./.stalwart/stalwart.db (or $STALWART_STORE)


class Report(BaseModel):
    topic: str
    notes: Annotated[list[str], operator.add] = []  # parallel nodes append, in order
    drafts: Annotated[list[str], operator.add] = []
    verdict: str = ""


def search_web(r: Report) -> dict[str, Any]:
    return {"notes": [f"web: three recent posts on {r.topic}"]}


def search_papers(r: Report) -> dict[str, Any]:
    return {"notes": [f"papers: a 2024 survey of {r.topic}"]}


async def write(ctx: sw.Context, r: Report) -> dict[str, Any]:
    draft = await ctx.llm("sim:writer", f"Write about {r.topic} from: {'; '.join(r.notes)}"
                          f" (draft {len(r.drafts) + 1})")
    return {"drafts": [draft]}


def critique(r: Report) -> dict[str, Any]:
    return {"verdict": "good" if len(r.drafts) >= 2 else "needs sources"}


def next_step(r: Report) -> Literal["write", "__end__"]:
    return sw.END if r.verdict == "good" or len(r.drafts) >= 3 else "write"


graph = sw.Graph(Report, name="report")
graph.node("web", search_web)
graph.node("papers", search_papers)
graph.node(write)
graph.node(critique)
graph.conditional_edge(sw.START, lambda r: ["web", "papers"], ["web", "papers"])
graph.edge(["web", "papers"], "write")  # a join: write runs once both are done
graph.edge("write", "critique")
graph.conditional_edge("critique", next_step)
flow = graph.compile(max_steps=10)


@app.workflow
async def report(ctx: sw.Context, state: Report) -> Report:
    return await flow.run(ctx, state)


async def main() -> None:
    print(flow.to_mermaid())
    async with app:
        handle = await app.start(report, Report(topic="durable agents"))
        final = await handle.result()
        print(f"notes: {final.notes}")
        print(f"drafts: {len(final.drafts)}, verdict: {final.verdict}")
        for event in await app.events(handle.run_id):
            if event.kind == "step_completed" and (event.name or "").startswith("node:"):
                delta = json.loads(event.payload or "{}")
                print(f"step {event.step_id} {event.name}: journaled {sorted(delta)} "
                      f"({len(event.payload or '')} bytes)")
        print(f"inspect it: stalwart runs show {handle.run_id}")


if __name__ == "__main__":
    asyncio.run(main())

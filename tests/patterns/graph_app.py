"""The process the graph crash tests kill: a state graph whose nodes leave effects in
the ledgers of ``crash_app`` (same command line: ``STORE LEDGER_DIR WORKFLOW RUN_ID``,
and ``$CRASH_AT = "LABEL:N:PHASE"``).

The graph loops on ``think`` (a plain node: one step), and every third turn fans out to
``search`` (plain) and ``review`` (a node that takes the context: an effect step, then
its update's step), which a join brings back to ``think``; six turns end it.
"""

from __future__ import annotations

import asyncio
import json
import operator
import sys
from pathlib import Path
from typing import Annotated, Any

import crash_app
from pydantic import BaseModel

import stalwart as sw


class Notes(BaseModel):
    messages: Annotated[list[str], operator.add] = []
    notes: Annotated[list[str], operator.add] = []
    n: int = 0


def think(s: Notes) -> dict[str, Any]:
    crash_app.effect("think")
    return {"messages": [f"thought {s.n}"], "n": s.n + 1}


def search(s: Notes) -> dict[str, Any]:
    crash_app.effect("search")
    return {"notes": [f"found at {s.n}"]}


async def review(ctx: sw.Context, s: Notes) -> dict[str, Any]:
    await ctx.step(crash_app.effect, "review", name="review:effect")
    return {"notes": [f"reviewed at {s.n}"]}


def after_think(s: Notes) -> str | list[str]:
    if s.n >= 6:
        return sw.END
    return ["search", "review"] if s.n % 3 == 0 else "think"


graph = sw.Graph(Notes, name="notes")
graph.node(think)
graph.node(search)
graph.node(review)
graph.edge(sw.START, "think")
graph.conditional_edge("think", after_think, ["think", "search", "review", sw.END])
graph.edge(["search", "review"], "think")
flow = graph.compile(max_steps=20)


async def _notes(ctx: sw.Context) -> Notes:
    return await flow.run(ctx, Notes())


notes = sw.Workflow(_notes, name="notes")

EXPECTED = Notes(
    messages=[f"thought {i}" for i in range(6)],
    notes=["found at 3", "reviewed at 3"],
    n=6)


async def main(store: str, run_id: str) -> Any:
    app = sw.Runtime(store, poll_interval=0.1, park_after=5.0, lease_seconds=30.0)
    app.register(notes)
    try:
        handle = await app.start(notes, run_id=run_id)
        return (await handle.result(timeout=120)).model_dump(mode="json")
    finally:
        await app.close()


if __name__ == "__main__":
    store_arg, ledger_arg, _wf, rid = sys.argv[1:5]
    crash_app.LEDGER = Path(ledger_arg)
    print(json.dumps(asyncio.run(main(store_arg, rid))), flush=True)

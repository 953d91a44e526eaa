"""Fan-in with backpressure: three researchers, each on its share of the run's budget,
and an editor whose context window cannot hold all their findings.

The run's token budget is split 2:1:1 among the researchers (``ctx.split_budget``, a
journaled step). Their findings enter the editor's conversation as separate, unpinned
messages after the task (``sw.fan_in``), so the editor's window policy acts on them
before the call: under ``evict`` the oldest findings go and the journal names them;
under ``reject`` the call is refused with the numbers, before anything is sent. Glued
into the task, they would have been pinned with it. Offline: the models are scripted
(``FunctionModel``).

    python examples/fan_in.py
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import stalwart as sw

app = sw.Runtime()  # the journal: ./.stalwart/stalwart.db (or $STALWART_STORE)

TOPICS = {"market": 2, "risks": 1, "tech": 1}  # name: weight of its budget share
TASK = "Write a one-line report from the researchers' findings."


def findings(topic: str) -> Any:
    """A researcher's model: ~300 tokens of findings on its topic."""
    return lambda _request: f"{topic}: " + (
        f"the {topic} notes say durable agents need retries, journals and budgets. " * 20)


def editor(request: sw.ModelRequest) -> str:
    """The editor's model: says which findings it was shown."""
    shown = re.findall(r"^\[(\w+)\]", "\n".join(m.content or "" for m in
                                                request.messages), re.M)
    return f"Report from {len(shown)} of {len(TOPICS)} findings: {', '.join(shown)}."


RESEARCHERS = [sw.Agent(t, sw.FunctionModel(findings(t), name=t)) for t in TOPICS]
EDITORS = {policy: sw.Agent("editor", sw.FunctionModel(editor, name="editor"),
                            instructions="You edit research into reports.",
                            context=sw.ContextWindow(900, reserve_output=150,
                                                     policy=policy))
           for policy in ("evict", "reject")}


@app.workflow(budget=sw.Budget(max_tokens=20_000))
async def report(ctx: sw.Context, policy: str) -> str:
    shares = await ctx.split_budget(TOPICS)
    notes = await ctx.gather(*(r.run(ctx, f"Research {r.name}.", budget=shares[r.name])
                               for r in RESEARCHERS))
    return await sw.fan_in(ctx, EDITORS[policy], TASK,
                           {r.name: n for r, n in zip(RESEARCHERS, notes, strict=True)})


async def main() -> None:
    async with app:
        for policy in EDITORS:
            handle = await app.start(report, policy)
            try:
                outcome = await handle.result()
            except sw.RunFailedError as exc:
                err = exc.__cause__
                assert isinstance(err, sw.ContextOverflowError), err
                outcome = (f"refused before the call: ContextOverflowError (needs "
                           f"{err.needed} tokens, the window allows {err.limit})")
            events = await app.store.load_events(handle.run_id)
            split = next(json.loads(e.payload or "{}") for e in events
                         if e.kind == "step_completed" and e.name == "budget:split")
            notes = [json.loads(e.payload or "{}") for e in events
                     if e.kind == "context_window"]
            print(f"{policy}: {outcome}")
            print(f"  budget shares (tokens): {[s['max_tokens'] for s in split]}")
            for n in notes:
                moved = [m["preview"].split("\n")[0] for m in n["moved"]]
                print(f"  window: {n['action']} {moved} ({n['before']} > {n['limit']} "
                      "tokens)")


if __name__ == "__main__":
    asyncio.run(main())

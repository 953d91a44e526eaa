"""A long conversation through a context window: the same reading agent under four
policies, and what each one did, from the journal.

The agent reads 30 support tickets, one tool call each (~250 tokens a ticket), through
a 3,000-token window. Under ``reject`` the request that would not fit is refused before
it is sent, with the numbers. Under ``evict`` old ticket bodies become stubs (their
calls keep an answer) and the journal says which and why. Under ``summarize`` old turns
are replaced by a summary written in a durable step. Under ``page`` old turns move to the
agent's warm memory in the store (a stub in their place), and the agent fetches the
urgent one back with its ``recall`` tool before reporting. Offline: the model and the
summarizer are scripted (``FunctionModel``).

    python examples/long_conversation.py
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import stalwart as sw

app = sw.Runtime()  # the journal: ./.stalwart/stalwart.db (or $STALWART_STORE)

TICKETS = 30


async def read_ticket(number: int) -> str:
    """The ticket's text."""
    urgent = " URGENT: the customer's invoice 4471 was charged twice." if number == 2 else ""
    return (f"ticket {number}:{urgent} " + "the dashboard loads slowly after the update; "
            "the customer attached logs and a screenshot and asks for a call back. " * 5)


def reader(request: sw.ModelRequest) -> Any:
    """The agent's model: the next ticket each turn, then a report. As the summarizer,
    it keeps the urgent sentences and how far the reading got."""
    text = "\n".join(m.content or "" for m in request.messages)
    if request.messages[0].content == sw.Summarize().instructions:
        urgent = " ".join(dict.fromkeys(re.findall(r"URGENT: [^.]*\.", text)))
        last = max(int(n) for n in re.findall(r"ticket (\d+)", text))
        return f"Read up to ticket {last}. {urgent}".strip()
    ids = [int(m.tool_call_id[1:]) for m in request.messages
           if m.tool_call_id and m.name == "read_ticket"]
    ids += [int(n) for n in re.findall(r"Read up to ticket (\d+)", text)]
    following = max(ids, default=0) + 1
    if following <= TICKETS:
        return sw.ToolCallRequest.create(f"t{following}", "read_ticket",
                                         {"number": following})
    paged = "paged out" in text
    if paged and "invoice 4471" not in text and not any(
            m.name == "recall" for m in request.messages):
        return sw.ToolCallRequest.create("recall-1", "recall",
                                         {"query": "URGENT invoice charged twice"})
    seen = "seen" if "invoice 4471" in text else "no longer in view"
    if paged:
        seen += " (recalled from memory)"
    return f"Read {TICKETS} tickets; the urgent double charge (invoice 4471): {seen}."


def agent_with(policy: sw.Reject | sw.Evict | sw.Summarize | sw.Page) -> sw.Agent[str]:
    return sw.Agent("support", sw.FunctionModel(reader, name="reader"),
                    instructions="Read every ticket, then report.",
                    tools=[sw.Tool(read_ticket)], max_iterations=TICKETS + 5,
                    context=sw.ContextWindow(3_000, reserve_output=300, policy=policy))


AGENTS = {"reject": agent_with(sw.Reject()), "evict": agent_with(sw.Evict()),
          "summarize": agent_with(sw.Summarize(max_summary_tokens=120)),
          "page": agent_with(sw.Page(memory=sw.Memory("support"), recall_tokens=300))}


@app.workflow
async def triage(ctx: sw.Context, policy: str) -> str:
    return await AGENTS[policy].run(ctx, "Read the open tickets.")


async def main() -> None:
    async with app:
        for policy in AGENTS:
            handle = await app.start(triage, policy)
            try:
                outcome = await handle.result()
            except sw.RunFailedError as exc:
                outcome = f"refused: {exc.message.split(': ', 1)[-1][:90]}"
            events = await app.store.load_events(handle.run_id)
            notes = [json.loads(e.payload or "{}") for e in events
                     if e.kind == "context_window"]
            moved = sum(len(n["moved"]) for n in notes)
            actions = sorted({str(n["action"]) for n in notes})
            print(f"{policy}: {outcome}")
            print(f"  window: {len(notes)} actions {actions}, {moved} messages moved "
                  f"(stalwart runs trace {handle.run_id})")


if __name__ == "__main__":
    asyncio.run(main())

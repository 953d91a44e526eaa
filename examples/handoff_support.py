"""A handoff with a state contract: triage hands a billing case to a billing agent.

The contract says what must transfer (the customer and the issue), what must not (the
card number triage saw) and what is transformed on the way (e-mail addresses redacted
from the summary). Triage's first handoff carries the card number and misses the
issue: it goes back to triage as a structured error, and triage corrects itself. The
billing agent sees only the contract, never triage's conversation. Offline: triage is
a scripted model, billing a ``sim:`` model.

    python examples/handoff_support.py
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from pydantic import BaseModel

import stalwart as sw

app = sw.Runtime()  # the journal: ./.stalwart/stalwart.db (or $STALWART_STORE)


class BillingCase(BaseModel):
    customer_id: str
    issue: str
    summary: str = ""


def redact_emails(text: str) -> str:
    return re.sub(r"[\w.+-]+@[\w.-]+", "[email]", text)


def triage_model(request: sw.ModelRequest) -> Any:
    """Triage's model: hands off; when told its handoff broke the contract, fixes it."""
    refusals = [m for m in request.messages if m.role == "tool"]
    if not refusals:
        return sw.ToolCallRequest.create("h1", "transfer_to_billing", {
            "customer_id": "c-42", "card_number": "4111 1111 1111 1111"})
    return sw.ToolCallRequest.create("h2", "transfer_to_billing", {
        "customer_id": "c-42", "issue": "charged twice for order 1009",
        "summary": "Customer (ann@example.com) says the second charge came a day later."})


triage = sw.Agent("triage", sw.FunctionModel(triage_model, name="triage"),
                  instructions="Find out what the customer needs and hand off.")
billing = sw.Agent("billing", "sim:billing", instructions="Resolve billing cases.")

team = sw.Team([triage, billing], [
    sw.Handoff("triage", "billing", contract=BillingCase,
               local=("card_number",),                 # never leaves triage
               transform={"summary": redact_emails},   # applied on the way, journaled
               description="Charges, refunds, invoices."),
], max_hops=3, max_reasks=2)


@app.workflow
async def support(ctx: sw.Context, message: str) -> dict[str, Any]:
    result = await team.run(ctx, message, start="triage")
    return {"answered_by": result.agent, "chain": list(result.chain),
            "transferred": list(result.transfers), "answer": result.output}


async def main() -> None:
    async with app:
        handle = await app.start(
            support, "My card 4111 1111 1111 1111 was charged twice! ann@example.com")
        out = await handle.result()
        for event in await app.events(handle.run_id):
            if event.kind == "tool_call_repaired":
                refusal = json.loads(event.payload or "{}")
                print(f"refused {refusal['tool']}: {refusal['message']}")
        print(f"chain: {' -> '.join(out['chain'])}")
        print(f"billing received: {json.dumps(out['transferred'][0])}")
        print(f"answer from {out['answered_by']}: {out['answer'][:60]}")
        print(f"inspect it: stalwart runs show {handle.run_id}")


if __name__ == "__main__":
    asyncio.run(main())

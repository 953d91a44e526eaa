"""The process the handoff crash tests kill: triage hands a case off to billing, whose
tool issues a refund; every model turn, the handoff's transform and the refund leave an
effect in ``crash_app``'s ledgers (same command line and ``$CRASH_AT``)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import crash_app
from pydantic import BaseModel

import stalwart as sw


class Case(BaseModel):
    customer_id: str
    issue: str


def triage_model(request: sw.ModelRequest) -> Any:
    crash_app.effect("model-triage")
    return sw.ToolCallRequest.create("h1", "transfer_to_billing",
                                     {"customer_id": "c-42", "issue": "double charge"})


def billing_model(request: sw.ModelRequest) -> Any:
    crash_app.effect("model-billing")
    if not any(m.role == "tool" for m in request.messages):
        return sw.ToolCallRequest.create("r1", "refund", {"customer_id": "c-42"})
    return f"done: {request.messages[-1].content}"


def tag(issue: str) -> str:
    crash_app.effect("transform")
    return f"[billing] {issue}"


def refund(customer_id: str) -> str:
    """Refund the customer."""
    crash_app.effect("refund")
    return f"refunded {customer_id}"


triage = sw.Agent("triage", sw.FunctionModel(triage_model, name="triage"))
billing = sw.Agent("billing", sw.FunctionModel(billing_model, name="billing"),
                   tools=[sw.Tool(refund)])
team = sw.Team([triage, billing], [sw.Handoff("triage", "billing", contract=Case,
                                              transform={"issue": tag})])


async def _desk(ctx: sw.Context) -> dict[str, Any]:
    result = await team.run(ctx, "I was charged twice", start="triage")
    return {"output": result.output, "chain": list(result.chain),
            "transfers": list(result.transfers)}


desk = sw.Workflow(_desk, name="desk")


async def main(store: str, run_id: str) -> Any:
    app = sw.Runtime(store, poll_interval=0.1, park_after=5.0, lease_seconds=30.0)
    app.register(desk)
    try:
        handle = await app.start(desk, run_id=run_id)
        return await handle.result(timeout=120)
    finally:
        await app.close()


if __name__ == "__main__":
    store_arg, ledger_arg, _wf, rid = sys.argv[1:5]
    crash_app.LEDGER = Path(ledger_arg)
    print(json.dumps(asyncio.run(main(store_arg, rid))), flush=True)

"""A human approval bound to what was approved: a refund waits for a person's decision.

The workflow computes a refund and asks for approval of that exact payload; the run
parks durably (a process restart would not lose the wait). A "reviewer" here lists the
pending approvals, as `stalwart approvals` does, and approves with the token it was
shown. For a second refund of 4,000.00 the reviewer sends the token they were shown
for the first (40.00): it binds another run, step and payload, so the approval is
refused; the reviewer denies it instead, and the run takes the refusal path. Each decision is an
event of the run's journal: who, when, the comment and the token.

    python examples/approval_refund.py
"""

from __future__ import annotations

import asyncio
import json

import stalwart as sw
from stalwart.store import EventKind

app = sw.Runtime(park_after=0.0)  # the journal: ./.stalwart/stalwart.db (or $STALWART_STORE)


def pay(order: str, amount: float) -> str:
    return f"refunded {amount:.2f} on {order} (key {sw.current_step().idempotency_key})"


@app.workflow
async def refund(ctx: sw.Context, order: str, amount: float) -> str:
    decision = await ctx.approval("refund", {"order": order, "amount": amount},
                                  timeout=7 * 24 * 3600, default="deny")
    if decision.denied:
        return f"{order}: not refunded ({decision.by}: {decision.comment})"
    return await ctx.step(pay, order, amount)


async def waiting(run_id: str) -> sw.ApprovalRequest:
    for _ in range(200):
        found = await app.approvals(run_id)
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise RuntimeError(f"run {run_id} asked for no approval")


async def main() -> None:
    async with app:
        first = await app.start(refund, "A-17", 40.0)
        shown = await waiting(first.run_id)
        print(f"waiting: {shown.name} {json.dumps(shown.payload)} token {shown.token[:12]}...")
        await app.approve(first.run_id, "refund", by="ana", comment="receipt checked",
                          token=shown.token)
        print(await first.result())

        second = await app.start(refund, "B-99", 4000.0)
        asked = await waiting(second.run_id)
        try:  # the reviewer approves what they were shown for A-17: another payload
            await app.approve(second.run_id, asked.step_id, by="ana", token=shown.token)
        except sw.ApprovalConflictError as exc:
            print(f"refused: {type(exc).__name__}")
        await app.deny(second.run_id, "refund", by="ana", comment="amount too high")
        print(await second.result())

        audit = [json.loads(e.payload or "{}") for e in await app.events(first.run_id)
                 if e.kind == EventKind.SIGNAL_RECEIVED]
        print(f"audit: approved={audit[0]['approved']} by={audit[0]['by']} "
              f"comment={audit[0]['comment']!r}")


if __name__ == "__main__":
    asyncio.run(main())

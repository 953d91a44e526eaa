"""Actors: a page-view counter per page, with durable state and a durable mailbox.

Each page is an instance of the ``page_views`` actor, made by the first message sent to
it. An instance handles one message at a time, in the order sent, each exactly once,
whichever worker holds it; its state is committed with each message's acknowledgement.
A message sent again with the same id (a client retrying) counts once. A workflow asks
an instance and waits for the reply durably; a reminder fires on the runtime's clock.
Offline; run it twice and the counts go on from where they were.

    python examples/actor_counter.py
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

import stalwart as sw

app = sw.Runtime(poll_interval=0.05)  # the journal: ./.stalwart/stalwart.db


class Views(BaseModel):
    count: int = 0
    visitors: list[str] = []
    reports: list[int] = []


class Hit(BaseModel):
    visitor: str = ""
    report: bool = False  # a reminder's message


@app.actor(state=Views)
async def page_views(ctx: sw.ActorContext[Views], hit: Hit) -> int:
    if hit.report:  # the reminder set below, handed back when due
        ctx.state.reports.append(ctx.state.count)
        return ctx.state.count
    ctx.state.count += 1
    ctx.state.visitors.append(hit.visitor)
    if ctx.state.count == 3:
        ctx.remind("report", 0.2, Hit(report=True))  # durable: survives a restart
    return ctx.state.count


@app.workflow
async def visit(ctx: sw.Context, page: str, visitor: str) -> int:
    """A workflow asks an instance: one journaled send, then a durable wait."""
    return await ctx.ask(page_views, page, Hit(visitor=visitor))


async def main() -> None:
    async with app:
        base = {page: (await app.actor_state(page_views, page)).count
                for page in ("home", "docs")}
        await app.send(page_views, "home", Hit(visitor="ada"))
        await app.send(page_views, "home", Hit(visitor="alan"))
        # A retry of the same message (same id) is handled once.
        run = len((await app.actor_state(page_views, "docs")).visitors)
        await app.send(page_views, "docs", Hit(visitor="grace"), message_id=f"docs-{run}")
        await app.send(page_views, "docs", Hit(visitor="grace"), message_id=f"docs-{run}")
        count = await app.run(visit, "home", "edsger")
        print(f"home: {count - base['home']} new views (asked by a workflow)")
        while True:
            home = await app.actor_state(page_views, "home")
            docs = await app.actor_state(page_views, "docs")
            if docs.count == base["docs"] + 1 and (base["home"] or home.reports):
                break
            await asyncio.sleep(0.05)
        print(f"docs: {docs.count - base['docs']} new view (sent twice, counted once)")
        print(f"home visitors: {', '.join(home.visitors[-3:])}")
        if home.reports:
            print(f"home reminder fired at count {home.reports[0]}")
        print("inspect it: stalwart runs show actor:page_views:home")


if __name__ == "__main__":
    asyncio.run(main())

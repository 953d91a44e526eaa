"""A supervision tree: a lead agent restarts its research workers when they fail.

Three researchers run as child runs under an Erlang/OTP-style supervisor. The one on
"risks" reads from a flaky source that fails twice; the supervisor restarts it (one for
one: its siblings go on undisturbed), journaling each restart with its reason, and gives
up (escalates) only past 3 restarts within 60 seconds. Offline: the models are ``sim:``.

    python examples/supervisor.py
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import stalwart as sw

app = sw.Runtime()  # the journal: ./.stalwart/stalwart.db (or $STALWART_STORE)

reads: Counter[str] = Counter()


def read_source(topic: str) -> str:
    """An unreliable source: "risks" fails on its first two reads."""
    reads[topic] += 1
    if topic == "risks" and reads[topic] <= 2:
        raise ConnectionError(f"source for {topic!r} timed out (read {reads[topic]})")
    return f"notes on {topic}"


@app.workflow
async def researcher(ctx: sw.Context, topic: str) -> str:
    notes = await ctx.step(read_source, topic)
    return await ctx.llm("sim:researcher", f"Summarize in one line: {notes}")


@app.workflow
async def lead(ctx: sw.Context, topics: list[str]) -> dict[str, str]:
    outcomes = await ctx.supervise(
        [sw.ChildSpec(researcher, (t,), id=t, restart="transient") for t in topics],
        strategy="one_for_one", max_restarts=3, within=60)
    return {topic: str(out.result) for topic, out in outcomes.items()}


async def main() -> None:
    async with app:
        handle = await app.start(lead, ["history", "risks", "tooling"])
        findings = await handle.result()
        for topic, summary in findings.items():
            print(f"{topic}: {summary}")
        for event in await app.events(handle.run_id):
            if event.name == "supervisor:restart" and event.kind == "step_completed":
                restart = json.loads(event.payload or "{}")
                print(f"restart {restart['restarts_in_window']} of {restart['child']}: "
                      f"{restart['reason']}")
        print(f"inspect it: stalwart runs show {handle.run_id}")


if __name__ == "__main__":
    asyncio.run(main())

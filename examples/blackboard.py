"""A blackboard that contains a hallucination.

A researcher posts three facts to a shared, durable blackboard; one is made up. A
fact-checker, registered as a knowledge source, verifies what it can and refutes the
rest. A careless writer builds on everything it reads; a careful one reads
``verified_only``. The board shows what was refuted, by whom, and which answer was
built on it (context poisoning, with the chain). Offline: the models are scripted.

    python examples/blackboard.py
    stalwart board facts          # the entries, their provenance and verification
"""

from __future__ import annotations

import asyncio

import stalwart as sw

app = sw.Runtime()  # the journal: ./.stalwart/stalwart.db (or $STALWART_STORE)
facts = sw.Blackboard("facts")

ATLAS = {"h100:memory": "80 GB", "h100:process": "TSMC 4N"}
researcher = sw.Agent("researcher", sw.FunctionModel(lambda r: "-", name="researcher"))


def fact_checker(entry: sw.BoardEntry) -> sw.Verdict:
    """Checks a fact against a trusted source (here: a dictionary)."""
    topic = entry.key.removeprefix("fact:")
    if ATLAS.get(topic) == entry.value:
        return sw.Verdict(accept=True)
    return sw.Verdict(accept=False, reasons=[f"the atlas says {ATLAS.get(topic, 'nothing')}"])


facts.knowledge_source(fact_checker, pattern="fact:*")


@app.workflow
async def research(ctx: sw.Context) -> list[str]:
    for key, value in (("fact:h100:memory", "80 GB"), ("fact:h100:process", "TSMC 4N"),
                       ("fact:h100:launch", "1997")):  # the hallucination
        await facts.post(ctx, key, value, agent=researcher)
    judged = await facts.run_verifiers(ctx)
    careless = await facts.read(ctx, "fact:*")
    careful = await facts.read(ctx, "fact:*", verified_only=True)
    await facts.post(ctx, "summary:careless", "; ".join(str(e.value) for e in careless),
                     agent="writer", sources=careless)
    await facts.post(ctx, "summary:careful", "; ".join(str(e.value) for e in careful),
                     agent="writer", sources=careful)
    lines = [f"{e.key}: {e.state} by {e.verified_by}"
             + (f" ({e.note})" if e.note else "") for e in judged]
    for p in await facts.poisoning(ctx):
        lines.append(f"poisoned: {p.key} via {' -> '.join(p.chain)}")
    return lines


async def main() -> None:
    async with app:
        handle = await app.start(research)
        for line in await handle.result():
            print(line)
        print("inspect it: stalwart board facts")


if __name__ == "__main__":
    asyncio.run(main())

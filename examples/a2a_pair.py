"""A2A: one stalwart workflow served as an A2A agent, another calling it as a durable
step.

The *researcher* runtime serves its ``research`` workflow as an A2A agent on 127.0.0.1
(agent card at ``/.well-known/agent-card.json``). The *desk* runtime's workflow asks it
through ``sw.A2AAgent``: a *send* step (journaled: the task id) and a *wait* step
(journaled: the answer). Run it twice: the second time the desk's run is read from its
journal and the researcher hears nothing. Offline: both on this machine. Needs the
a2a extra: ``pip install -e '.[a2a]'`` in the checkout.

    python examples/a2a_pair.py
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import stalwart as sw

HERE = Path(".stalwart")  # two journals, one per side, in ./.stalwart
HERE.mkdir(exist_ok=True)
researcher = sw.Runtime(HERE / "researcher.db")
desk = sw.Runtime(HERE / "desk.db")


@researcher.workflow(name="research")
async def research(ctx: sw.Context, question: str) -> dict[str, object]:
    words = await ctx.step(lambda: len(question.split()), name="count_words")
    return {"question": question, "words": words, "answer": "42"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT = free_port()
SERVER = sw.A2AServer(researcher, research, name="researcher",
                      url=f"http://127.0.0.1:{PORT}/",
                      description="Answers questions (a stalwart workflow).")
REMOTE = sw.A2AAgent(f"http://127.0.0.1:{PORT}/", name="researcher")


@desk.workflow(name="ask_researcher")
async def ask_researcher(ctx: sw.Context, question: str) -> object:
    return await REMOTE.ask(ctx, question)


async def main() -> None:
    async with researcher, desk, SERVER.serving(port=PORT):
        answer = await desk.run(ask_researcher, "what is six times seven?", run_id="desk-1")
        print("answer:", json.dumps(answer, sort_keys=True))
        print("tasks started at the researcher:", SERVER.tasks_started)
        print("messages sent by the desk:", REMOTE.sent)


if __name__ == "__main__":
    asyncio.run(main())

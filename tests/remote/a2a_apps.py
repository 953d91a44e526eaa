"""The two sides of the A2A crash test, each run as a process of its own.

    python a2a_apps.py server DB STATE PORT   # serves `research` as an A2A agent
    python a2a_apps.py client DB URL          # runs `ask`, prints its result as JSON

The server's workflow journals that it started (STATE/started.jsonl, once per run) and
waits for STATE/release before answering.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import stalwart as sw

ROLE, DB = sys.argv[1], sys.argv[2]
app = sw.Runtime(DB, lease_seconds=2.0)


@app.workflow(name="research")
async def research(ctx: sw.Context, question: str) -> str:
    state = Path(sys.argv[3])

    def started() -> str:
        with (state / "started.jsonl").open("a") as f:
            f.write(json.dumps({"run": ctx.run_id, "question": question}) + "\n")
        return "ok"

    await ctx.step(started, name="started")

    async def released() -> str:
        (state / "waiting").touch()  # `started` is journaled: a crash now replays it
        while not (state / "release").exists():
            await asyncio.sleep(0.02)  # the test's release file: no event to wait on
        return "released"

    await ctx.step(released, name="wait_release")

    def answered() -> str:  # the workflow's effect, counted by the server-crash test
        with (state / "answered.jsonl").open("a") as f:
            f.write(json.dumps({"run": ctx.run_id}) + "\n")
        return "ok"

    await ctx.step(answered, name="answered")
    return f"answer to {question}"


REMOTE = sw.A2AAgent(sys.argv[3] if ROLE == "client" else "http://127.0.0.1/",
                     name="researcher",
                     policy=sw.Policy(retry=sw.Retry(max_attempts=None, initial=0.2,
                                                     max_backoff=1.0, max_elapsed=60.0)))


@app.workflow(name="ask")
async def ask(ctx: sw.Context) -> object:
    return await REMOTE.ask(ctx, "why is the sky blue?")


async def main() -> None:
    if ROLE == "server":
        port = int(sys.argv[4])
        server = sw.A2AServer(app, research, name="researcher",
                              url=f"http://127.0.0.1:{port}/")
        async with app:
            await server.serve(port=port)
    else:
        async with app:
            result = await app.run(ask, run_id="ask-1")
            print(json.dumps({"result": result, "sent": REMOTE.sent}))


if __name__ == "__main__":
    asyncio.run(main())

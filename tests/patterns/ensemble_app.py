"""The process the ensemble crash tests kill: a vote, a two-layer mixture, a
generator-critic loop and a Reflexion loop whose every model call leaves an effect in
``crash_app``'s ledgers (same command line and ``$CRASH_AT``): ``model-NAME`` per call
of agent NAME's model."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import crash_app

import stalwart as sw


def model(name: str, answer: Any) -> sw.FunctionModel:
    def reply(request: sw.ModelRequest) -> Any:
        crash_app.effect(f"model-{name}")
        return answer(request) if callable(answer) else answer

    return sw.FunctionModel(reply, name=name)


def last_user(request: sw.ModelRequest) -> str:
    return next(m.content or "" for m in reversed(request.messages) if m.role == "user")


voters = [sw.Agent(n, model(n, a)) for n, a in (("v1", "42"), ("v2", "42"), ("v3", "41"))]
proposers = [sw.Agent(n, model(n, lambda r, n=n: f"{n} says {len(last_user(r)) % 7}"))
             for n in ("p1", "p2")]
aggregator = sw.Agent("agg", model("agg", "synthesis"))
writer = sw.Agent("gen", model("gen", lambda r: "draft v2" if "revision" in last_user(r)
                               else "draft v1"))
critic = sw.Agent("critic", model("critic", lambda r: json.dumps(
    {"accept": "draft v2" in last_user(r), "reasons": ["needs v2"]})),
    output_type=sw.Verdict)
actor = sw.Agent("actor", model("actor", lambda r: "4" if "Lessons" in last_user(r) else "3"))
judge = sw.Agent("judge", model("judge", lambda r: json.dumps(
    {"success": "Answer:\n4" in last_user(r), "feedback": "2+2 is 4"})),
    output_type=sw.Evaluation)


async def _voting(ctx: sw.Context) -> Any:
    r = await sw.vote(ctx, voters, "the answer?")
    return {"winner": r.winner, "dissent": list(r.dissent)}


async def _moa(ctx: sw.Context) -> Any:
    r = await sw.mixture(ctx, proposers, aggregator, "task", layers=2)
    return {"output": r.output, "divergences": [round(d, 3) for d in r.divergences]}


async def _refining(ctx: sw.Context) -> Any:
    r = await sw.refine(ctx, writer, critic, "write", max_rounds=3)
    return {"output": r.output, "rounds": r.rounds}


async def _reflecting(ctx: sw.Context) -> Any:
    r = await sw.reflexion(ctx, actor, judge, "2+2?", max_trials=3)
    return {"output": r.output, "memory": list(r.memory)}


board = sw.Blackboard("jobs")
worker = sw.Agent("worker", model("worker", lambda r: f"done {last_user(r)}"))


def checker(entry: sw.BoardEntry) -> bool:
    crash_app.effect("verifier")
    return entry.value != "bogus"


board.knowledge_source(checker)


async def _blackboard(ctx: sw.Context) -> Any:
    for i, v in enumerate(["a", "bogus", "c"]):
        await board.post(ctx, f"job:{i}", v, agent="producer")
    await board.run_verifiers(ctx)
    done = []
    while (job := await board.take(ctx, "job:*", verified_only=True)) is not None:
        done.append(await worker.run(ctx, job.value))
    left = await board.read(ctx, "job:*")
    return {"done": done, "left": [(e.key, e.state) for e in left]}


WORKFLOWS = {w.name: w for w in (sw.Workflow(_voting, name="voting"),
                                 sw.Workflow(_blackboard, name="blackboard"),
                                 sw.Workflow(_moa, name="moa"),
                                 sw.Workflow(_refining, name="refining"),
                                 sw.Workflow(_reflecting, name="reflecting"))}


async def main(store: str, workflow: str, run_id: str) -> Any:
    app = sw.Runtime(store, poll_interval=0.1, park_after=5.0, lease_seconds=30.0)
    for wf in WORKFLOWS.values():
        app.register(wf)
    try:
        handle = await app.start(WORKFLOWS[workflow], run_id=run_id)
        return await handle.result(timeout=120)
    finally:
        await app.close()


if __name__ == "__main__":
    store_arg, ledger_arg, wf_name, rid = sys.argv[1:5]
    crash_app.LEDGER = Path(ledger_arg)
    print(json.dumps(asyncio.run(main(store_arg, wf_name, rid))), flush=True)

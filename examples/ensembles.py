"""Many minds, one truth: a vote, a mixture of agents, a generator-critic loop and a
Reflexion loop, in one durable workflow.

* five annotators vote on a label; one of them is broken and always says "spam", and one
  honestly disagrees — the majority (3 of 5) still decides, and both show up in the
  dissent;
* three analysts propose, a second layer revises seeing the first layer's answers, and an
  editor synthesizes; the divergence says how much they disagreed;
* a writer drafts and a critic sends it back with reasons until it cites a source;
* a solver tries, fails, writes down a lesson, and passes on its second trial.

Every model answer is a journaled step: kill the process mid-way and run it again, and
no answer is paid for twice. Offline: the models are scripted functions.

    python examples/ensembles.py
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import stalwart as sw

app = sw.Runtime()  # the journal: ./.stalwart/stalwart.db (or $STALWART_STORE)


def last_user(request: sw.ModelRequest) -> str:
    return next(m.content or "" for m in reversed(request.messages) if m.role == "user")


def annotator(i: int) -> sw.Agent[str]:
    label = "spam" if i == 4 else ("ham" if i != 2 else "spam")
    return sw.Agent(f"annotator{i}", sw.FunctionModel(lambda r: label, name=f"ann{i}"))


annotators = [annotator(i) for i in range(5)]


def analyst(name: str, first: str, second: str) -> sw.Agent[str]:
    def think(request: sw.ModelRequest) -> str:
        return second if "Answers to build on" in last_user(request) else first
    return sw.Agent(name, sw.FunctionModel(think, name=name))


analysts = [
    analyst("optimist", "demand grows with cheaper inference",
            "demand grows as inference gets cheaper"),
    analyst("skeptic", "margins shrink as prices fall",
            "demand grows but margins shrink as inference gets cheaper"),
    analyst("quant", "volume up 40% year on year",
            "demand grows 40% a year as inference gets cheaper"),
]
editor = sw.Agent("editor", sw.FunctionModel(
    lambda r: "Demand grows ~40% a year as inference gets cheaper; margins shrink.",
    name="editor"))

writer = sw.Agent("writer", sw.FunctionModel(
    lambda r: ("GPUs are scarce (source: TSMC Q3 report)." if "revision" in last_user(r)
               else "GPUs are scarce."), name="writer"))
critic = sw.Agent("critic", sw.FunctionModel(
    lambda r: json.dumps({"accept": "source:" in last_user(r),
                          "reasons": [] if "source:" in last_user(r) else ["cite a source"]}),
    name="critic"), output_type=sw.Verdict)

solver = sw.Agent("solver", sw.FunctionModel(
    lambda r: "17" if "Lessons" in last_user(r) else "15", name="solver"))
checker = sw.Agent("checker", sw.FunctionModel(
    lambda r: json.dumps({"success": "Answer:\n17" in last_user(r),
                          "feedback": "8+9 is not 15: carry the one"}), name="checker"),
    output_type=sw.Evaluation)


@app.workflow
async def many_minds(ctx: sw.Context) -> dict[str, Any]:
    v = await sw.vote(ctx, annotators, "Is 'WIN A FREE GPU' spam or ham?")
    m = await sw.mixture(ctx, analysts, editor, "What happens to AI demand?", layers=2)
    r = await sw.refine(ctx, writer, critic, "One sentence on GPU supply.", max_rounds=3)
    x = await sw.reflexion(ctx, solver, checker, "8+9?", max_trials=3)
    return {
        "vote": f"{v.winner} ({v.votes} of {len(v.ballots)}; dissent: "
                f"{', '.join(v.dissent)})",
        "mixture": f"{m.output} (divergence {m.divergences[0]:.2f} -> "
                   f"{m.divergence:.2f}, {m.calls} calls)",
        "refine": f"{r.output} (round {r.rounds}; asked: "
                  f"{'; '.join(x for h in r.history for x in h.verdict.reasons)})",
        "reflexion": f"{x.output} (trial {len(x.trials)}; memory: {'; '.join(x.memory)})",
    }


async def main() -> None:
    async with app:
        handle = await app.start(many_minds)
        for name, line in (await handle.result()).items():
            print(f"{name}: {line}")
        print(f"inspect it: stalwart runs show {handle.run_id}")


if __name__ == "__main__":
    asyncio.run(main())

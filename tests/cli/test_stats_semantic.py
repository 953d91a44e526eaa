"""``stalwart stats`` counts semantic failure like any other: a semantic column per
model, the retries per accepted answer with their tokens, oscillations, and the
blackboard entries built on refuted ones."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import stalwart as sw

from .conftest import Cli


def make_journal(path: Path) -> None:
    app = sw.Runtime(str(path))
    voters = [sw.Agent(n, sw.FunctionModel(lambda r, a=a: a, name=n))
              for n, a in (("m1", "4"), ("m2", "4"), ("liar", "5"))]
    board = sw.Blackboard("kb")

    def flip(given: sw.patterns.RefineInput) -> str:
        return "A" if given.round % 2 else "B"

    def critic(given: sw.patterns.CritiqueInput) -> sw.Verdict:
        return sw.Verdict(accept=given.round == 5, reasons=["again"])

    @app.workflow
    async def work(ctx: sw.Context) -> None:
        await sw.vote(ctx, voters, "2+2?")
        await sw.refine(ctx, flip, critic, "plan", max_rounds=5)
        a = await board.post(ctx, "claim", "made up", agent="scout", model="sim:scout")
        await board.post(ctx, "answer", "built on it", sources=[a])
        await board.verify(ctx, "claim", verified=False, by="checker")

    async def go() -> None:
        async with app:
            await app.run(work, run_id="w")

    asyncio.run(go())


def test_stats_shows_semantic_failures_retries_oscillations_and_poisoning(
        cli: Cli, tmp_path: Path) -> None:
    """The liar's model has 1 semantic failure in its row; the scout's refuted entry
    counts for sim:scout; the refine loop's 4 extra rounds for 1 accepted draft (and
    the vote's winner) are 2 retries per accepted answer; its A/B drafts oscillate;
    'answer' is built on the refuted 'claim'."""
    path = tmp_path / "j.db"
    make_journal(path)
    data = json.loads(cli("stats", "--json", "--store", str(path)).stdout)
    rows = {r["key"]: r for r in data["rows"]}
    assert rows["function:liar"]["semantic"] == 1 and rows["function:m1"]["semantic"] == 0
    assert rows["sim:scout"]["semantic"] == 1
    assert rows["member:flip"]["semantic"] == 4
    sem = data["semantic"]
    assert sem["retries"] == {"critic round": 4} and sem["accepted"] == 2
    assert sem["amplification"] == 2.0
    assert [(o["where"], o["repeats"]) for o in sem["oscillations"]] == [
        ("refine flip", 2)]
    assert data["poisoned"] == {"kb": [{"key": "answer", "chain": ["answer", "claim"],
                                        "refuted_by": "checker"}]}
    shown = cli("stats", "--store", str(path))
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert "semantic retries: critic round x4; 0 tokens; 2 accepted answer(s); 2.00 " \
           "retries per accepted answer" in out
    assert "oscillation: run w, refine flip:" in out
    assert "poisoned: blackboard 'kb', answer built on refuted claim (answer -> claim)" in out

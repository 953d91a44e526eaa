"""Semantic failure on seeded simulated agents: each figure beside what theory predicts.

    python bench/bench_semantic.py [--runs 4000] [--seed 17]

Every figure comes from ``--runs`` workflow runs (at least 1,000) of the real patterns —
agents on scripted models (``sw.FunctionModel``: every answer a journaled model turn
behind the policy stack), on an in-memory journal — whose answers are drawn from a
seeded random source per run and per agent, so one seed gives one result.

1. **Voting.** Five independent voters, each right with p = 0.7 (else one of two wrong
   answers): the majority's accuracy against the binomial value
   ``P[Bin(5, 0.7) >= 3] = 0.837``, within +-2 points. With one voter always wrong
   (and four at 0.7) the majority's accuracy must be >= the value for four voters
   (``P[Bin(4, 0.7) >= 3] = 0.652``), less 2 points of sampling noise: a faulty voter
   costs no more than its absence.
2. **Hallucination containment.** A three-agent pipeline: a researcher posts a fact to a
   blackboard, false with p = 0.2; a writer builds a draft on what it reads; an editor
   makes the final answer. A verifier (a knowledge source) refutes a false fact with
   p = 0.9 and never a true one. Share of final answers carrying a false fact: without
   verification (theory 0.2) and with ``verified_only`` (theory 0.2 x 0.1 = 0.02; target
   <= 0.02 + 3 standard errors), with the cost in extra model calls and tokens per run.
3. **MoA and critic.** A mixture of three proposers over two layers and an aggregator:
   the divergence distribution of each layer and the calls per answer (theory: 3 x 2 + 1
   = 7). A generator-critic loop whose critic accepts a draft with p = 0.5 each round,
   ``max_rounds=4``: the distribution of rounds against the geometric one, and the
   calls per accepted answer against ``2 E[rounds | accepted]``.

Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import stalwart as sw
from stalwart.testing import MemoryStore

BATCH = 250


def binom_at_least(n: int, k: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def draw(seed: int, run: int, who: str) -> random.Random:
    """The random source of one agent in one run: independent and reproducible."""
    return random.Random(f"{seed}:{run}:{who}")


def run_of(request: sw.ModelRequest) -> int:
    text = " ".join(m.content or "" for m in request.messages)
    found = re.search(r"#(\d+)", text)
    assert found, text
    return int(found.group(1))


def scripted(name: str, answer: Callable[[int, sw.ModelRequest], str]) -> sw.FunctionModel:
    return sw.FunctionModel(lambda r: answer(run_of(r), r), name=name)


async def many(app: sw.Runtime, wf: sw.Workflow[Any, Any], runs: int) -> list[Any]:
    """Run ``wf(i)`` for every run i, ``BATCH`` at a time; the results in order."""
    out: list[Any] = []
    for start in range(0, runs, BATCH):
        handles = [await app.start(wf, i) for i in range(start, min(runs, start + BATCH))]
        out.extend(await asyncio.gather(*(h.result(timeout=600) for h in handles)))
    return out


def fresh() -> sw.Runtime:
    return sw.Runtime(MemoryStore(), concurrency=BATCH)


def line(label: str, measured: float, theory: float, target: str, ok: bool,
         extra: str = "") -> bool:
    ratio = measured / theory if theory else float("nan")
    print(f"  {label:<44} {measured:8.4f} {theory:8.4f} {ratio:7.3f}  {target:<22} "
          f"{'ok' if ok else 'MISSED'}  {extra}".rstrip())
    return ok


# -- 1. voting ---------------------------------------------------------------------


def voter(name: str, seed: int, p: float | None) -> sw.Agent[str]:
    def answer(run: int, _r: sw.ModelRequest) -> str:
        if p is None:
            return "B"  # always wrong
        rng = draw(seed, run, name)
        return "A" if rng.random() < p else rng.choice(["B", "C"])

    return sw.Agent(name, scripted(name, answer))


async def voting(runs: int, seed: int, always_wrong: bool) -> tuple[float, Counter[str]]:
    voters = [voter(f"v{i}", seed, 0.7) for i in range(4 if always_wrong else 5)]
    if always_wrong:
        voters.append(voter("liar", seed, None))
    app = fresh()

    @app.workflow
    async def ballot(ctx: sw.Context, run: int) -> str:
        try:
            return (await sw.vote(ctx, voters, f"question #{run}")).winner
        except sw.NoQuorumError:
            return "-"

    async with app:
        winners = await many(app, ballot, runs)
    counts = Counter(winners)
    return counts["A"] / runs, counts


# -- 2. hallucination containment --------------------------------------------------


async def containment(runs: int, seed: int, verified: bool) -> tuple[float, float, float]:
    """(share of final answers with a false fact, calls per run, tokens per run)."""
    def research(run: int, _r: sw.ModelRequest) -> str:
        false = draw(seed, run, "researcher").random() < 0.2
        return "FALSE: the H100 launched in 1997" if false else "TRUE: the H100 has 80 GB"

    def check(run: int, r: sw.ModelRequest) -> str:
        claim = r.messages[-1].content or ""
        caught = "FALSE" in claim and draw(seed, run, "verifier").random() < 0.9
        return '{"accept": %s}' % ("false" if caught else "true")

    def write(run: int, r: sw.ModelRequest) -> str:
        facts = re.findall(r"(TRUE|FALSE): [^\"\\n]*", r.messages[-1].content or "")
        return f"draft #{run}: " + ("; ".join(facts) or "no verified facts")

    def edit(run: int, r: sw.ModelRequest) -> str:
        return f"final #{run}: " + (r.messages[-1].content or "").split(": ", 1)[-1]

    researcher = sw.Agent("researcher", scripted("researcher", research))
    checker = sw.Agent("verifier", scripted("verifier", check), output_type=sw.Verdict)
    writer = sw.Agent("writer", scripted("writer", write))
    editor = sw.Agent("editor", scripted("editor", edit))
    board = sw.Blackboard("facts")
    board.knowledge_source(checker, pattern="fact:*")
    app = fresh()

    @app.workflow
    async def pipeline(ctx: sw.Context, run: int) -> str:
        found = await researcher.run(ctx, f"find a fact #{run}")
        await board.post(ctx, f"fact:#{run}", found, agent=researcher)
        if verified:
            await board.run_verifiers(ctx, f"fact:#{run}")
        facts = await board.read(ctx, f"fact:#{run}", verified_only=verified)
        draft = await writer.run(ctx, f"write #{run} from {[e.value for e in facts]}")
        return await editor.run(ctx, draft)

    async with app:
        finals = await many(app, pipeline, runs)
        # What each run spent, from the journal (the same accounting as `stalwart stats`).
        spent = [sw.usage_report(await app.events(rec.run_id)).total
                 for rec in await app.list_runs(limit=runs + 1)]
    false = sum(1 for f in finals if "FALSE" in f) / runs
    calls = statistics.fmean(t.calls for t in spent)
    tokens = statistics.fmean(t.input_tokens + t.output_tokens for t in spent)
    return false, calls, tokens


# -- 3. MoA and critic -------------------------------------------------------------

WORDS = ("durable", "journal", "lease", "retry", "breaker", "quorum", "replay", "agent",
         "budget", "trace", "fallback", "saga")


async def moa(runs: int, seed: int) -> tuple[list[float], list[float], float]:
    def propose(name: str) -> Callable[[int, sw.ModelRequest], str]:
        def answer(run: int, r: sw.ModelRequest) -> str:
            rng = draw(seed, run, name + ("2" if "build on" in (r.messages[-1].content or "")
                                          else "1"))
            k = 4 if "build on" in (r.messages[-1].content or "") else 6
            base = ["durable", "journal"] if k == 4 else []
            return " ".join(base + rng.sample(WORDS, k - len(base)))
        return answer

    proposers = [sw.Agent(n, scripted(n, propose(n))) for n in ("p1", "p2", "p3")]
    aggregator = sw.Agent("agg", scripted("agg", lambda run, r: f"synthesis #{run}"))
    app = fresh()

    @app.workflow
    async def mix(ctx: sw.Context, run: int) -> list[Any]:
        r = await sw.mixture(ctx, proposers, aggregator, f"why durable execution? #{run}",
                             layers=2)
        return [*r.divergences, r.calls]

    async with app:
        results = await many(app, mix, runs)
    return [r[0] for r in results], [r[1] for r in results], statistics.fmean(
        r[2] for r in results)


async def critic_loop(runs: int, seed: int, accept: float, max_rounds: int
                      ) -> tuple[Counter[int], float]:
    def generate(run: int, r: sw.ModelRequest) -> str:
        before = re.findall(r"draft #\d+ v(\d+)", r.messages[-1].content or "")
        return f"draft #{run} v{int(before[-1]) + 1 if before else 1}"

    def judge(run: int, r: sw.ModelRequest) -> str:
        version = re.findall(r"draft #\d+ v(\d+)", r.messages[-1].content or "")[-1]
        ok = draw(seed, run, f"critic{version}").random() < accept
        return '{"accept": %s, "reasons": ["tighten it"]}' % ("true" if ok else "false")

    gen = sw.Agent("generator", scripted("generator", generate))
    crit = sw.Agent("critic", scripted("critic", judge), output_type=sw.Verdict)
    app = fresh()

    @app.workflow
    async def loop(ctx: sw.Context, run: int) -> list[Any]:
        r = await sw.refine(ctx, gen, crit, f"write #{run}", max_rounds=max_rounds,
                            on_exhausted="return")
        return [r.rounds if r.accepted else 0, r.calls]

    async with app:
        results = await many(app, loop, runs)
    rounds = Counter(r[0] for r in results)
    accepted = [r for r in results if r[0]]
    calls_per_accepted = sum(r[1] for r in results) / max(1, len(accepted))
    return rounds, calls_per_accepted


def quantiles(xs: Sequence[float]) -> str:
    q = statistics.quantiles(xs, n=10)
    return (f"mean {statistics.fmean(xs):.3f}  p10 {q[0]:.3f}  p50 {statistics.median(xs):.3f}"
            f"  p90 {q[-1]:.3f}")


async def main(runs: int, seed: int) -> int:
    started = time.perf_counter()
    print(f"stalwart bench_semantic  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
          f"{platform.machine()}, Python {platform.python_version()}  runs={runs} "
          f"seed={seed}\n")
    ok = True
    print(f"  {'figure':<44} {'measured':>8} {'theory':>8} {'ratio':>7}  {'target':<22}")
    print("voting")
    p5 = binom_at_least(5, 3, 0.7)
    acc, counts = await voting(runs, seed, always_wrong=False)
    ok &= line("majority of 5, p=0.7", acc, p5, "within +-0.02",
               abs(acc - p5) <= 0.02, f"(no quorum: {counts['-'] / runs:.3f})")
    p4 = binom_at_least(4, 3, 0.7)
    acc_liar, counts = await voting(runs, seed, always_wrong=True)
    ok &= line("4 at p=0.7 + 1 always wrong", acc_liar, p4, ">= value for 4 - 0.02",
               acc_liar >= p4 - 0.02, f"(no quorum: {counts['-'] / runs:.3f})")

    print("hallucination containment (share of final answers with a false fact)")
    f0, c0, t0 = await containment(runs, seed, verified=False)
    ok &= line("without verification", f0, 0.2, "within +-0.03", abs(f0 - 0.2) <= 0.03,
               f"calls/run {c0:.2f}  tokens/run {t0:.1f}")
    f1, c1, t1 = await containment(runs, seed, verified=True)
    se = math.sqrt(0.02 * 0.98 / runs)
    ok &= line("with verified_only", f1, 0.02, f"<= 0.02 + 3se ({0.02 + 3 * se:.4f})",
               f1 <= 0.02 + 3 * se, f"calls/run {c1:.2f}  tokens/run {t1:.1f}")
    print(f"  cost of containment: +{c1 - c0:.2f} calls/run, +{t1 - t0:.1f} tokens/run "
          f"(x{c1 / c0:.2f} calls, x{t1 / t0:.2f} tokens)")

    print("mixture of agents (3 proposers x 2 layers + aggregator)")
    d1, d2, calls = await moa(runs, seed)
    print(f"  divergence, layer 1: {quantiles(d1)}")
    print(f"  divergence, layer 2: {quantiles(d2)}")
    ok &= line("calls per answer", calls, 7.0, "== 7", calls == 7.0)

    print("generator-critic (critic accepts with p=0.5 per round, max_rounds=4)")
    a, n = 0.5, 4
    rounds, per_answer = await critic_loop(runs, seed, a, n)
    for k in range(1, n + 1):
        theory = a * (1 - a) ** (k - 1)
        got = rounds[k] / runs
        ok &= line(f"accepted in round {k}", got, theory, "within +-0.03",
                   abs(got - theory) <= 0.03)
    ex = (1 - a) ** n
    ok &= line("not accepted in 4 rounds", rounds[0] / runs, ex, "within +-0.03",
               abs(rounds[0] / runs - ex) <= 0.03)
    accepted_share = 1 - ex
    mean_rounds = (sum(k * a * (1 - a) ** (k - 1) for k in range(1, n + 1)) + n * ex)
    theory_calls = 2 * mean_rounds / accepted_share
    ok &= line("calls per accepted answer", per_answer, theory_calls, "within 5%",
               abs(per_answer / theory_calls - 1) <= 0.05)
    print(f"\n{'all targets met' if ok else 'TARGET MISSED'}  "
          f"({time.perf_counter() - started:.0f}s)")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4000,
                        help="workflow runs per figure (at least 1,000)")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    if args.runs < 1000:
        parser.error("--runs must be at least 1,000")
    sys.exit(asyncio.run(main(args.runs, args.seed)))

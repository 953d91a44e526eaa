"""Ensembles on scripted members: votes (quorum, tally, dissent, abstentions, 2f+1),
mixtures of agents (layers, strategies, divergence, escalation), generator-critic loops
and Reflexion (bounded, journaled), and bad input refused before anything is asked."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

import stalwart as sw
from stalwart.patterns import (
    CritiqueInput,
    EvaluationInput,
    MixtureInput,
    RefineInput,
    ReflectionInput,
    TrialInput,
    divergence,
    token_distance,
)
from stalwart.store import EventKind, RunStatus
from stalwart.testing import MemoryStore

T0 = 1_700_000_000.0


def make_app() -> sw.Runtime:
    return sw.Runtime(MemoryStore(), clock=sw.FakeClock(T0, autojump=True))


def says(answer: Any, name: str) -> Any:
    def voter(task: Any) -> Any:
        return answer
    voter.__name__ = name
    return voter


def broken(task: Any) -> str:
    raise ValueError("voter down")


def records(events: list[Any], prefix: str) -> list[dict[str, Any]]:
    return [json.loads(e.payload or "{}") for e in events
            if e.kind == EventKind.STEP_COMPLETED and (e.name or "").startswith(prefix)]


def counting_model(name: str, answers: list[Any], seen: list[sw.ModelRequest]) -> sw.FunctionModel:
    """A model that gives ``answers`` in turn and keeps every request."""

    def reply(request: sw.ModelRequest) -> Any:
        seen.append(request)
        return answers[min(len(seen), len(answers)) - 1]

    return sw.FunctionModel(reply, name=name)


# -- vote --------------------------------------------------------------------------


async def test_a_vote_returns_the_majority_with_tally_dissent_and_abstentions() -> None:
    """Three of five say Paris, one Lyon, one fails: Paris wins with 3 votes; the Lyon
    voter and the failed one dissent; the tally step journals each ballot and a semantic
    failure for each dissenter."""
    app = make_app()
    voters = [says("Paris", "a"), says("Lyon", "b"), says("Paris", "c"), broken,
              says("Paris", "d")]

    @app.workflow
    async def capital(ctx: sw.Context) -> dict[str, Any]:
        r = await sw.vote(ctx, voters, "capital of France?")
        return {"winner": r.winner, "votes": r.votes, "quorum": r.quorum,
                "tally": [list(t) for t in r.tally], "dissent": list(r.dissent),
                "errors": [b.error for b in r.ballots]}

    async with app:
        out = await app.run(capital, run_id="v")
        events = await app.events("v")
    assert out == {"winner": "Paris", "votes": 3, "quorum": 3,
                   "tally": [["Paris", 3], ["Lyon", 1]], "dissent": ["b", "broken"],
                   "errors": [None, None, None, "ValueError: voter down", None]}
    [tally] = records(events, "vote:tally")
    assert tally["winner"] == '"Paris"' and tally["tally"] == [['"Paris"', 3], ['"Lyon"', 1]]
    assert [s["member"] for s in tally["semantic"]] == ["b", "broken"]
    assert {e.name for e in events if e.kind == EventKind.STEP_COMPLETED} >= {
        "vote:a", "vote:b", "vote:c", "vote:d", "vote:tally"}


async def test_agents_vote_once_each_and_an_invalid_ballot_abstains() -> None:
    """One agent asked three times is three voters (name#i), one model call each; an
    answer that is not the output_type is an abstention (after the agent's re-asks)."""

    class Answer(BaseModel):
        city: str

    seen: list[sw.ModelRequest] = []
    model = counting_model("m", ['{"city": "Oslo"}', '{"city": "Oslo"}', "nonsense"], seen)
    agent = sw.Agent("geo", model, max_reasks=0)
    app = make_app()

    @app.workflow
    async def ask(ctx: sw.Context) -> dict[str, Any]:
        r = await sw.vote(ctx, [agent] * 3, "capital of Norway?", output_type=Answer)
        return {"winner": r.winner.model_dump(), "dissent": list(r.dissent),
                "calls": r.calls, "models": [b.model for b in r.ballots]}

    async with app:
        out = await app.run(ask, run_id="v")
    assert out["winner"] == {"city": "Oslo"}
    assert out["dissent"] == ["geo#3"]
    assert out["calls"] == 2  # the failed voter's turn is not counted as an answer's
    assert out["models"][:2] == ["function:m", "function:m"]
    assert len(seen) == 3


async def test_f_faulty_voters_of_2f_plus_1_cannot_outvote_the_rest() -> None:
    """Two always-wrong voters (each its own wrong answer, or the same one) and one that
    crashes among seven cannot stop four right ones; three agreeing wrong voters of five
    would (the limit documented)."""
    app = make_app()
    right = [says(42, f"r{i}") for i in range(4)]

    @app.workflow
    async def tolerant(ctx: sw.Context) -> list[Any]:
        a = await sw.vote(ctx, [*right, says(7, "w1"), says(7, "w2"), broken], "q")
        b = await sw.vote(ctx, [*right[:3], says(1, "x"), says(2, "y")], "q")
        c = await sw.vote(ctx, [*right[:2], says(7, "w1"), says(7, "w2"), says(7, "w3")], "q")
        return [a.winner, b.winner, c.winner]

    async with app:
        assert await app.run(tolerant) == [42, 42, 7]


async def test_no_quorum_is_a_typed_error_with_the_tally() -> None:
    """Two against two with one abstention has no majority (a tie, too): NoQuorumError
    with the tally and who abstained; the run fails (not dead-lettered)."""
    app = make_app()

    @app.workflow
    async def split(ctx: sw.Context) -> Any:
        return (await sw.vote(ctx, [says("a", "p"), says("b", "q"), says("a", "r"),
                                    says("b", "s"), broken], "?")).winner

    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(split, run_id="n")
        rec = await app.get_run("n")
    assert rec.status == RunStatus.FAILED
    assert caught.value.error_type == "stalwart.errors.NoQuorumError"
    attrs = json.loads(rec.error or "{}")["attributes"]
    assert attrs["tally"] == [['"a"', 2], ['"b"', 2]]
    assert attrs["abstained"] == ["broken"] and attrs["quorum"] == 3


async def test_a_tie_at_a_low_quorum_is_no_winner_and_escalate_dlq_dead_letters() -> None:
    """With quorum=1 two answers each with one vote tie: no winner. escalate="dlq"
    dead-letters the run with the ballots as evidence."""
    app = make_app()

    @app.workflow
    async def tie(ctx: sw.Context) -> Any:
        return (await sw.vote(ctx, [says("a", "p"), says("b", "q")], "?", quorum=1,
                              escalate="dlq")).winner

    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(tie, run_id="t")
        rec = await app.get_run("t")
    assert rec.status == RunStatus.DEAD_LETTERED
    assert caught.value.error_type == "stalwart.errors.EscalatedError"
    attrs = json.loads(rec.error or "{}")["attributes"]
    assert attrs["pattern"] == "vote" and attrs["reason"].startswith("NoQuorumError")
    assert [b["answer"] for b in attrs["evidence"]["ballots"]] == ["a", "b"]


@pytest.mark.parametrize(("voters", "kw", "message"), [
    ([], {}, "needs at least one voter"),
    ([broken, broken], {"quorum": 3}, "a quorum of 3 cannot be reached by 2 voter(s)"),
    ([broken], {"quorum": 0}, "quorum must be an int >= 1"),
    ([broken, "not a voter"], {}, "voters must be agents or functions"),
    ([broken], {"escalate": "human"}, "escalate must be one of 'error', 'dlq', 'approval'"),
])
async def test_bad_vote_input_is_refused_before_anyone_is_asked(
        voters: list[Any], kw: dict[str, Any], message: str) -> None:
    """A clear ConfigurationError; no voter ran, nothing was journaled for the vote."""
    app = make_app()

    @app.workflow
    async def bad(ctx: sw.Context) -> Any:
        return await sw.vote(ctx, voters, "?", **kw)

    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(bad, run_id="b")
        events = await app.events("b")
    assert caught.value.error_type == "stalwart.errors.ConfigurationError"
    assert message in str(caught.value)
    assert not [e for e in events if e.kind == EventKind.STEP_COMPLETED]


# -- divergence --------------------------------------------------------------------


def test_divergence_of_text_structures_and_values() -> None:
    """Text: mean pairwise token-set distance; structures: share of fields disagreed
    on (a missing field disagrees); values: share off the most common one."""
    assert token_distance("The cat sat", "the CAT sat sat") == 0.0
    assert token_distance("a b", "b c") == pytest.approx(2 / 3)
    assert token_distance("", "") == 0.0
    assert divergence(["a b", "b c", "a b"]) == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    assert divergence([{"city": "Oslo", "year": 2024}, {"city": "Oslo", "year": 2023},
                       {"city": "Oslo", "year": 2024}]) == 0.5
    assert divergence([{"a": 1}, {"a": 1, "b": 2}]) == 0.5
    assert divergence([1, 1, 2, 3]) == 0.5
    assert divergence(["only one"]) == 0.0
    assert divergence([]) == 0.0


# -- mixture -----------------------------------------------------------------------


async def test_a_mixture_layers_see_the_previous_answers_and_the_aggregator_synthesizes(
        ) -> None:
    """Two layers of two proposers: layer 2 sees layer 1's answers; the aggregator sees
    layer 2's; the divergence of each layer is journaled and returned."""
    seen: list[MixtureInput] = []

    def p1(given: MixtureInput) -> str:
        seen.append(given)
        return "durable agents need journals" if given.layer == 1 else "journals and leases"

    def p2(given: MixtureInput) -> str:
        seen.append(given)
        return "agents crash often" if given.layer == 1 else "journals and leases"

    def agg(given: MixtureInput) -> str:
        seen.append(given)
        return " + ".join(given.previous)

    app = make_app()

    @app.workflow
    async def moa(ctx: sw.Context) -> dict[str, Any]:
        r = await sw.mixture(ctx, [p1, p2], agg, "why durable?", layers=2)
        return {"output": r.output, "divergences": list(r.divergences), "calls": r.calls}

    async with app:
        out = await app.run(moa, run_id="m")
        events = await app.events("m")
    assert out["output"] == "journals and leases + journals and leases"
    assert out["divergences"][1] == 0.0 and out["divergences"][0] == pytest.approx(
        token_distance("durable agents need journals", "agents crash often"))
    assert out["calls"] == 5
    layer2 = [g for g in seen if g.layer == 2]
    assert [g.previous for g in layer2] == [["durable agents need journals",
                                             "agents crash often"]] * 2
    assert [g.layer for g in seen if g.layer == 3] == [3]
    assert [r["layer"] for r in records(events, "mixture:layer:")] == [1, 2]
    [agg_rec] = records(events, "mixture:aggregate")
    assert agg_rec["strategy"] == "synthesize"


async def test_mixture_vote_and_weighted_strategies_need_no_aggregator() -> None:
    """"vote" takes the most common answer; "weighted" the heaviest, here the single
    expert outweighing two others."""
    app = make_app()
    ps = [says("A", "x"), says("B", "y"), says("B", "z")]

    @app.workflow
    async def moa(ctx: sw.Context) -> list[Any]:
        v = await sw.mixture(ctx, ps, None, "?", strategy="vote")
        w = await sw.mixture(ctx, ps, None, "?", strategy="weighted", weights=[5, 1, 1])
        return [v.output, w.output, v.calls]

    async with app:
        assert await app.run(moa, run_id="m") == ["B", "A", 3]
        events = await app.events("m")
    # whose answer lost is a semantic failure of that proposer, as a voter's dissent
    assert [[s["member"] for s in r["semantic"]]
            for r in records(events, "mixture:aggregate")] == [["x"], ["y", "z"]]


async def test_divergence_above_the_threshold_escalates_before_the_aggregator() -> None:
    """Structured answers that disagree on 1 field of 2 (0.5) are over escalate_above=0.3:
    DivergenceError with the answers; the aggregator is never asked."""
    asked: list[Any] = []

    def agg(given: MixtureInput) -> Any:
        asked.append(given)
        return given.previous[0]

    app = make_app()

    @app.workflow
    async def moa(ctx: sw.Context) -> Any:
        r = await sw.mixture(ctx, [says({"city": "Oslo", "year": 2024}, "a"),
                                   says({"city": "Oslo", "year": 2023}, "b")], agg, "?",
                             escalate_above=0.3)
        return r.output

    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(moa, run_id="d")
        rec = await app.get_run("d")
        events = await app.events("d")
    assert caught.value.error_type == "stalwart.errors.DivergenceError"
    attrs = json.loads(rec.error or "{}")["attributes"]
    assert attrs["divergence"] == 0.5 and attrs["threshold"] == 0.3
    assert attrs["answers"] == {"a": {"city": "Oslo", "year": 2024},
                                "b": {"city": "Oslo", "year": 2023}}
    assert asked == []
    [escalated] = records(events, "mixture:escalated")
    assert (escalated["divergence"], escalated["escalate"]) == (0.5, "error")


@pytest.mark.parametrize(("args", "kw", "message"), [
    (([], None), {}, "needs at least one proposer"),
    (([broken], None), {}, "strategy='synthesize') needs an aggregator"),
    (([broken], broken), {"layers": 0}, "layers must be an int >= 1"),
    (([broken], broken), {"strategy": "magic"}, "unknown strategy 'magic'"),
    (([broken], None), {"strategy": "weighted", "weights": [1, 2]}, "one weight per"),
    (([broken], broken), {"escalate_above": 1.5}, "escalate_above must be a number"),
])
async def test_bad_mixture_input_is_refused_before_anyone_is_asked(
        args: tuple[Any, Any], kw: dict[str, Any], message: str) -> None:
    """A clear ConfigurationError, nothing journaled."""
    app = make_app()

    @app.workflow
    async def bad(ctx: sw.Context) -> Any:
        return await sw.mixture(ctx, args[0], args[1], "?", **kw)

    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(bad, run_id="b")
        events = await app.events("b")
    assert caught.value.error_type == "stalwart.errors.ConfigurationError"
    assert message in str(caught.value)
    assert not [e for e in events if e.kind == EventKind.STEP_COMPLETED]


# -- refine ------------------------------------------------------------------------


def fussy_critic(given: CritiqueInput) -> sw.Verdict:
    if "sources" not in str(given.draft):
        return sw.Verdict(accept=False, reasons=["cite sources"])
    return sw.Verdict(accept=True, score=0.9)


async def test_refine_revises_with_the_critics_reasons_until_accepted() -> None:
    """Round 1's draft is rejected with a reason; the generator sees the draft and the
    reason in round 2 and the critic accepts. Both rounds are journaled."""
    seen: list[RefineInput] = []

    def writer(given: RefineInput) -> str:
        seen.append(given)
        return "a claim" if given.round == 1 else "a claim, with sources"

    app = make_app()

    @app.workflow
    async def draft(ctx: sw.Context) -> dict[str, Any]:
        r = await sw.refine(ctx, writer, fussy_critic, "write", max_rounds=3)
        return {"output": r.output, "rounds": r.rounds, "accepted": r.accepted,
                "reasons": [h.verdict.reasons for h in r.history], "calls": r.calls}

    async with app:
        out = await app.run(draft, run_id="r")
        events = await app.events("r")
    assert out == {"output": "a claim, with sources", "rounds": 2, "accepted": True,
                   "reasons": [["cite sources"], []], "calls": 4}
    assert (seen[1].draft, seen[1].reasons) == ("a claim", ["cite sources"])
    rounds = records(events, "refine:round:")
    assert [(r["round"], r["accepted"]) for r in rounds] == [(1, False), (2, True)]
    assert rounds[0]["semantic"] == [{"member": "writer", "model": None,
                                      "reason": "cite sources"}]


async def test_refine_is_bounded_by_rounds_and_by_virtual_time() -> None:
    """A critic that never accepts: after max_rounds, RefinementExhaustedError with the
    whole history; with within=100s and drafts that take 40s of (virtual) time, the
    fourth round never starts (t=120s), and on_exhausted="return" gives the last draft."""
    clock = sw.FakeClock(T0, autojump=True)
    app = sw.Runtime(MemoryStore(), clock=clock)

    async def slow_writer(request: sw.ModelRequest) -> str:
        await clock.sleep(40)
        return f"draft at {clock.now() - T0:.0f}"

    writer = sw.Agent("writer", sw.FunctionModel(slow_writer, name="slow"))
    never = sw.Agent("critic", sw.FunctionModel(
        lambda r: '{"accept": false, "reasons": ["no"]}', name="never"),
        output_type=sw.Verdict)

    @app.workflow
    async def bounded(ctx: sw.Context) -> dict[str, Any]:
        r = await sw.refine(ctx, writer, never, "w", max_rounds=10, within=100,
                            on_exhausted="return")
        return {"rounds": r.rounds, "accepted": r.accepted, "output": r.output}

    @app.workflow
    async def exhausted(ctx: sw.Context) -> Any:
        return (await sw.refine(ctx, writer, never, "w", max_rounds=2)).output

    async with app:
        assert await app.run(bounded) == {"rounds": 3, "accepted": False,
                                          "output": "draft at 120"}
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(exhausted, run_id="x")
        rec = await app.get_run("x")
    assert caught.value.error_type == "stalwart.errors.RefinementExhaustedError"
    attrs = json.loads(rec.error or "{}")["attributes"]
    assert attrs["rounds"] == 2
    assert [h["verdict"]["reasons"] for h in attrs["history"]] == [["no"], ["no"]]


# -- reflexion ---------------------------------------------------------------------


async def test_reflexion_remembers_its_reflections_until_a_trial_passes() -> None:
    """The actor fails until its memory holds the lesson; the reflector writes one per
    failed trial; the memory after each trial is journaled."""
    tried: list[TrialInput] = []

    def actor(given: TrialInput) -> int:
        tried.append(given)
        return 4 if any("add" in m for m in given.memory) else 3

    def judge(given: EvaluationInput) -> sw.Evaluation:
        ok = given.answer == 4
        return sw.Evaluation(success=ok, feedback="" if ok else "2+2 is not 3")

    def reflect(given: ReflectionInput) -> str:
        return f"I answered {given.answer}: {given.evaluation.feedback}; add carefully"

    app = make_app()

    @app.workflow
    async def learn(ctx: sw.Context) -> dict[str, Any]:
        r = await sw.reflexion(ctx, actor, judge, "2+2?", max_trials=3, reflector=reflect)
        return {"output": r.output, "trials": len(r.trials), "memory": list(r.memory),
                "calls": r.calls}

    async with app:
        out = await app.run(learn, run_id="x")
        events = await app.events("x")
    assert out == {"output": 4, "trials": 2, "calls": 5,
                   "memory": ["I answered 3: 2+2 is not 3; add carefully"]}
    assert [t.memory for t in tried] == [[], ["I answered 3: 2+2 is not 3; add carefully"]]
    trials = records(events, "reflexion:trial:")
    assert [t["memory"] for t in trials] == [out["memory"], out["memory"]]
    assert trials[0]["semantic"][0]["member"] == "actor"


async def test_reflexion_exhausted_dead_letters_with_every_trial_attached() -> None:
    """Without a reflector the memory is the evaluator's feedback; after max_trials,
    escalate="dlq" puts the run in the dead-letter queue with each trial and reflection."""
    app = make_app()

    def judge(given: EvaluationInput) -> dict[str, Any]:
        return {"success": False, "feedback": f"wrong at trial {given.trial}"}

    @app.workflow
    async def stuck(ctx: sw.Context) -> Any:
        return (await sw.reflexion(ctx, says("?", "actor"), judge, "t", max_trials=2,
                                   escalate="dlq")).output

    async with app:
        with pytest.raises(sw.RunFailedError):
            await app.run(stuck, run_id="s")
        rec = await app.get_run("s")
    assert rec.status == RunStatus.DEAD_LETTERED
    evidence = json.loads(rec.error or "{}")["attributes"]["evidence"]
    assert [(t["trial"], t["reflection"]) for t in evidence["trials"]] == [
        (1, "trial 1: wrong at trial 1"), (2, "trial 2: wrong at trial 2")]


@pytest.mark.parametrize(("kw", "message"), [
    ({"max_trials": 0}, "max_trials must be an int >= 1"),
    ({"within": -1}, "within must be a positive"),
    ({"reflector": 42}, "must be agents or functions"),
])
async def test_bad_reflexion_and_refine_input_is_refused(kw: dict[str, Any],
                                                         message: str) -> None:
    """A clear ConfigurationError; nothing asked."""
    app = make_app()

    @app.workflow
    async def bad(ctx: sw.Context) -> Any:
        return await sw.reflexion(ctx, broken, broken, "t", **kw)

    @app.workflow
    async def bad_refine(ctx: sw.Context) -> Any:
        return await sw.refine(ctx, broken, broken, "t", max_rounds=0)

    async with app:
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(bad)
        assert message in str(caught.value)
        with pytest.raises(sw.RunFailedError) as caught:
            await app.run(bad_refine)
        assert "max_rounds must be an int >= 1" in str(caught.value)


# -- escalation to a human (ctx.approval) ------------------------------------------


async def pending(app: sw.Runtime, run_id: str) -> Any:
    """The run's pending approval once it is journaled. Each look yields one turn to
    the run, bounded in real time: its members before it are steps in threads, which a
    loaded machine can hold back for many turns."""
    import asyncio

    deadline = asyncio.get_running_loop().time() + 30
    while not (found := await app.approvals(run_id)):
        assert asyncio.get_running_loop().time() < deadline, f"{run_id} asked for nothing"
        await asyncio.sleep(0)
    return found[0]


async def test_escalate_approval_asks_a_human_with_the_evidence() -> None:
    """A tied vote asks a human (the tally and ballots as the payload): approved, the
    plurality is the answer. A refine loop that exhausts asks with its history: denied,
    RefinementExhaustedError; a Reflexion loop approved returns its last answer."""
    app = sw.Runtime(MemoryStore())

    @app.workflow
    async def tied(ctx: sw.Context) -> Any:
        r = await sw.vote(ctx, [says("a", "p"), says("b", "q"), says("a", "r"),
                                says("b", "s")], "?", escalate="approval")
        return [r.winner, list(r.dissent)]

    @app.workflow
    async def drafting(ctx: sw.Context) -> Any:
        return (await sw.refine(ctx, says("d", "writer"), says({"accept": False}, "no"),
                                "t", max_rounds=2, escalate="approval")).output

    @app.workflow
    async def trying(ctx: sw.Context) -> Any:
        r = await sw.reflexion(ctx, says(3, "actor"), says({"success": False}, "judge"),
                               "t", max_trials=2, escalate="approval")
        return [r.output, len(r.trials)]

    async with app:
        v = await app.start(tied, run_id="v")
        req = await pending(app, "v")
        assert req.name == "vote: NoQuorumError"
        assert req.payload["tally"] == [['"a"', 2], ['"b"', 2]]
        await app.approve("v", req.step_id, by="ana")
        assert await v.result() == ["a", ["q", "s"]]
        d = await app.start(drafting, run_id="d")
        req = await pending(app, "d")
        assert [h["draft"] for h in req.payload["history"]] == ["d", "d"]
        await app.deny("d", req.step_id, by="ana")
        with pytest.raises(sw.RunFailedError) as caught:
            await d.result()
        assert caught.value.error_type == "stalwart.errors.RefinementExhaustedError"
        t = await app.start(trying, run_id="t")
        req = await pending(app, "t")
        assert req.name == "reflexion: ReflexionExhaustedError"
        await app.approve("t", req.step_id, by="ana")
        assert await t.result() == [3, 2]


async def test_a_divergent_mixture_approved_by_a_human_aggregates_all_the_same() -> None:
    """Over escalate_above with escalate="approval": a human sees the answers and the
    divergence; approved, the aggregator is asked after all."""
    asked: list[MixtureInput] = []

    def agg(given: MixtureInput) -> str:
        asked.append(given)
        return "merged"

    app = sw.Runtime(MemoryStore())

    @app.workflow
    async def moa(ctx: sw.Context) -> Any:
        return (await sw.mixture(ctx, [says("x y", "a"), says("z w", "b")], agg, "?",
                                 escalate_above=0.5, escalate="approval")).output

    async with app:
        m = await app.start(moa, run_id="m")
        req = await pending(app, "m")
        assert (req.name, req.payload["divergence"]) == ("mixture: DivergenceError", 1.0)
        assert asked == []
        await app.approve("m", req.step_id, by="ana")
        assert await m.result() == "merged"
    assert [g.previous for g in asked] == [["x y", "z w"]]

"""Semantic failures of the ensembles reach the metrics and the trace: a dissenting
voter is one ``stalwart.semantic_failures`` point keyed by its model, and an event on
the ``vote:tally`` step's span."""

from __future__ import annotations

import stalwart as sw
from stalwart.testing import MemoryStore

from .conftest import Otel


async def test_a_dissenting_voter_is_counted_by_model_and_shown_on_the_tally_span(
        otel: Otel) -> None:
    """Two voters say 42 and one (model "liar") says 41: one semantic failure, keyed
    function:liar, as a metric point and a span event."""
    clock = sw.FakeClock(autojump=True)
    app = sw.Runtime(MemoryStore(), clock=clock, tracing=otel.tracing())
    voters = [sw.Agent(f"v{i}", sw.FunctionModel(lambda r, a=a: a, name=n))
              for i, (n, a) in enumerate([("honest", "42"), ("honest2", "42"),
                                          ("liar", "41")])]

    @app.workflow
    async def ask(ctx: sw.Context) -> str:
        return (await sw.vote(ctx, voters, "?")).winner

    async with app:
        assert await app.run(ask) == "42"
    data = otel.reader.get_metrics_data()
    assert data is not None
    points = [p for rm in data.resource_metrics for sm in rm.scope_metrics
              for m in sm.metrics if m.name == "stalwart.semantic_failures"
              for p in m.data.data_points]
    assert [(p.attributes["stalwart.policy.key"], p.value) for p in points] == [  # type: ignore[attr-defined]
        ("function:liar", 1)]
    tally = otel.one("step vote:tally")
    assert [(e.name, (e.attributes or {}).get("stalwart.policy.key"))
            for e in tally.events] == [("stalwart.semantic_failure", "function:liar")]


async def test_an_oscillating_loop_is_counted(otel: Otel) -> None:
    """A refine loop whose drafts go A, B, A, B is one stalwart.oscillations point,
    keyed by the loop, and a span event on its semantic:oscillation step."""
    from stalwart.patterns import CritiqueInput, RefineInput

    app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True),
                     tracing=otel.tracing())

    def flip(given: RefineInput) -> str:
        return "A" if given.round % 2 else "B"

    def never(given: CritiqueInput) -> sw.Verdict:
        return sw.Verdict(accept=False)

    @app.workflow
    async def loop(ctx: sw.Context) -> int:
        return (await sw.refine(ctx, flip, never, "t", max_rounds=4,
                                on_exhausted="return")).rounds

    async with app:
        assert await app.run(loop) == 4
    data = otel.reader.get_metrics_data()
    assert data is not None
    points = [p for rm in data.resource_metrics for sm in rm.scope_metrics
              for m in sm.metrics if m.name == "stalwart.oscillations"
              for p in m.data.data_points]
    assert [(p.attributes["stalwart.policy.key"], p.value) for p in points] == [  # type: ignore[attr-defined]
        ("refine flip", 1)]
    step = otel.one("step semantic:oscillation")
    assert [e.name for e in step.events] == ["stalwart.oscillation"]

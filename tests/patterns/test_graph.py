"""State graphs (sw.Graph) in virtual time: loops, fan-out and joins, reducers, deltas in
the journal, max_steps, waits inside nodes, the Mermaid drawing, and graphs refused at
build time."""

from __future__ import annotations

import json
import operator
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

import stalwart as sw
from stalwart.patterns._delta import diff, patch
from stalwart.store import EventKind, RunStatus
from stalwart.testing import MemoryStore

T0 = 1_700_000_000.0


class Chat(BaseModel):
    messages: Annotated[list[str], operator.add] = []
    n: int = 0
    note: str = ""


class Doc(BaseModel):
    lines: list[str] = []
    title: str = "t"


class Draft(BaseModel):
    text: str = ""
    approved: bool = False


def make_app() -> sw.Runtime:
    return sw.Runtime(MemoryStore(), clock=sw.FakeClock(T0, autojump=True))


def loop_graph(turns: int, *, max_steps: int = 100) -> sw.CompiledGraph[Chat]:
    def agent(s: Chat) -> dict[str, Any]:
        return {"messages": [f"turn {s.n}"], "n": s.n + 1}

    def more(s: Chat) -> Literal["agent", "__end__"]:
        return "agent" if s.n < turns else sw.END

    g = sw.Graph(Chat, name="loop")
    g.node(agent)
    g.edge(sw.START, "agent")
    g.conditional_edge("agent", more)
    return g.compile(max_steps=max_steps)


def node_steps(events: list[Any]) -> list[Any]:
    return [e for e in events if e.kind == EventKind.STEP_COMPLETED
            and (e.name or "").startswith("node:")]


# -- deltas -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=3), kids,
                                                              max_size=4),
    max_leaves=12)


@given(JSON, JSON)
def test_patch_of_diff_rebuilds_any_json_value(a: Any, b: Any) -> None:
    """patch(a, diff(a, b)) is b, for any two JSON values (types kept: 1 is not 1.0)."""
    out = patch(a, diff(a, b))
    assert json.dumps(out, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert diff(a, a) is None


def test_a_grown_list_or_string_journals_only_its_tail() -> None:
    """A list or string that grew is an append of the tail; a nested object only the key
    that changed."""
    assert diff([1, 2], [1, 2, 3]) == ["+", [3]]
    assert diff("ab", "abc") == ["+", "c"]
    assert diff({"a": 1, "b": [1]}, {"a": 1, "b": [1, 2]}) == ["~", {"b": ["+", [2]]}]
    assert diff([1, 2], [2]) == ["=", [2]]
    assert diff({"a": 1}, {}) == ["~", {"a": ["-"]}]
    with pytest.raises(ValueError):
        patch(5, ["+", [1]])


# -- running ----------------------------------------------------------------------------


async def test_a_loop_re_enters_its_node_and_journals_deltas_not_the_state() -> None:
    """A node re-entered 30 times through a conditional edge: the final state is exact,
    each node step journals only that turn's message (a reducer update), so no step's
    record grows with the conversation."""
    app = make_app()
    flow = loop_graph(30)

    @app.workflow
    async def chat(ctx: sw.Context, state: Chat) -> Chat:
        return await flow.run(ctx, state)

    async with app:
        handle = await app.start(chat, Chat())
        final = await handle.result()
        events = await app.events(handle.run_id)
    assert final.messages == [f"turn {i}" for i in range(30)] and final.n == 30
    steps = node_steps(events)
    assert len(steps) == 30
    assert json.loads(steps[0].payload) == {"messages": ["r", ["turn 0"]], "n": ["=", 1]}
    assert json.loads(steps[-1].payload) == {"messages": ["r", ["turn 29"]], "n": ["=", 30]}


async def test_a_node_returning_the_whole_state_journals_its_difference() -> None:
    """A node that returns the state model (not a dict) journals the fields that
    changed, a grown list as its tail."""

    def write(d: Doc) -> Doc:
        return d.model_copy(update={"lines": [*d.lines, f"line {len(d.lines)}"]})

    g = sw.Graph(Doc)
    g.node(write)
    g.edge(sw.START, "write")
    g.conditional_edge("write", lambda d: "write" if len(d.lines) < 5 else sw.END,
                       ["write", sw.END])
    flow = g.compile()
    app = make_app()

    @app.workflow
    async def doc(ctx: sw.Context) -> Doc:
        return await flow.run(ctx, Doc(lines=["intro"] * 3))

    async with app:
        handle = await app.start(doc)
        final = await handle.result()
        events = await app.events(handle.run_id)
    assert final.lines == ["intro"] * 3 + ["line 3", "line 4"]
    assert [json.loads(e.payload) for e in node_steps(events)] == [
        {"lines": ["+", ["line 3"]]}, {"lines": ["+", ["line 4"]]}]


async def test_a_cycle_is_bounded_by_max_steps() -> None:
    """A cycle that never reaches END fails the run with GraphStepLimitError after
    exactly max_steps supersteps; the next node never runs."""
    g = sw.Graph(Chat, name="forever")
    g.node("spin", lambda s: {"n": s.n + 1})
    g.edge(sw.START, "spin")
    g.conditional_edge("spin", lambda s: "spin" if s.n >= 0 else sw.END, ["spin", sw.END])
    flow = g.compile(max_steps=7)
    app = make_app()

    @app.workflow
    async def forever(ctx: sw.Context) -> Chat:
        return await flow.run(ctx, Chat())

    async with app:
        handle = await app.start(forever)
        with pytest.raises(sw.RunFailedError) as info:
            await handle.result()
        events = await app.events(handle.run_id)
    assert info.value.error_type == "stalwart.errors.GraphStepLimitError"
    assert len(node_steps(events)) == 7
    failed = json.loads(events[-1].payload or "{}")
    assert failed["attributes"]["max_steps"] == 7 and failed["attributes"]["node"] == "spin"


class Fan(BaseModel):
    log: Annotated[list[str], operator.add] = []
    total: int = 0
    best: Annotated[int, max] = 0


def fan_graph() -> sw.CompiledGraph[Fan]:
    g = sw.Graph(Fan, name="fan")

    async def plan(ctx: sw.Context, s: Fan) -> dict[str, Any]:
        return {"log": ["plan"]}

    async def slow(ctx: sw.Context, s: Fan) -> dict[str, Any]:
        await ctx.sleep(30)  # finishes last, declared first
        return {"log": ["slow"], "best": 3}

    async def quick(ctx: sw.Context, s: Fan) -> dict[str, Any]:
        await ctx.sleep(1)
        return {"log": ["quick"], "best": 7}

    def quick2(s: Fan) -> dict[str, Any]:
        return {"log": ["quick2"]}

    def merge(s: Fan) -> dict[str, Any]:
        return {"log": ["merge"], "total": len(s.log)}

    g.node(plan)
    g.node(slow)
    g.node(quick)
    g.node(quick2)
    g.node(merge)
    g.edge(sw.START, "plan")
    g.conditional_edge("plan", lambda s: ["quick", "slow"], ["slow", "quick"])
    g.edge("quick", "quick2")
    g.edge(["slow", "quick2"], "merge")
    g.edge("merge", sw.END)
    return g.compile()


async def test_fan_out_joins_in_declaration_order_whatever_finishes_first() -> None:
    """A router fans out to two nodes that finish in the other order: their updates
    join in declaration order (slow before quick), a reducer (max) combines one field,
    and the join edge runs merge once both branches are done, branches of different
    lengths."""
    app = make_app()
    flow = fan_graph()

    @app.workflow
    async def fan(ctx: sw.Context) -> Fan:
        return await flow.run(ctx, Fan())

    async with app:
        handle = await app.start(fan)
        final = await handle.result()
        events = await app.events(handle.run_id)
    assert final.log == ["plan", "slow", "quick", "quick2", "merge"]
    assert final.total == 4 and final.best == 7
    names = [(e.step_id, e.name) for e in node_steps(events)]
    assert names[0] == ("1", "node:plan")
    assert ("2/0/2", "node:slow") in names and ("2/1/2", "node:quick") in names
    assert names[-1][1] == "node:merge"


async def test_parallel_writes_to_a_field_without_reducer_fail_the_run() -> None:
    """Two parallel nodes setting one plain field: GraphError naming the field."""
    g = sw.Graph(Chat)
    g.node("a", lambda s: {"note": "a"})
    g.node("b", lambda s: {"note": "b"})
    g.conditional_edge(sw.START, lambda s: ["a", "b"], ["a", "b"])
    g.edge("a", sw.END)
    g.edge("b", sw.END)
    flow = g.compile()
    app = make_app()

    @app.workflow
    async def clash(ctx: sw.Context) -> Chat:
        return await flow.run(ctx, Chat())

    async with app:
        handle = await app.start(clash)
        with pytest.raises(sw.RunFailedError) as info:
            await handle.result()
    assert info.value.error_type == "stalwart.errors.GraphError"
    assert "'note'" in str(info.value)


@pytest.mark.parametrize(("update", "router", "says"), [
    ({"nope": 1}, "agent", "not a field of Chat"),
    ({"n": "many"}, "agent", "update of 'n' is not valid"),
    ({"n": 1}, "elsewhere", "not one of its declared targets"),
    (["n"], "agent", "returned list"),
])
async def test_a_bad_update_or_route_fails_the_run_with_graph_error(
        update: Any, router: str, says: str) -> None:
    """An update naming no field, one that does not validate, a router answer outside
    its declared targets, an update that is not a dict: GraphError, the run fails."""
    g = sw.Graph(Chat)
    g.node("agent", lambda s: update)
    g.edge(sw.START, "agent")
    g.conditional_edge("agent", lambda s: router, ["agent", sw.END])
    flow = g.compile()
    app = make_app()

    @app.workflow
    async def bad(ctx: sw.Context) -> Chat:
        return await flow.run(ctx, Chat())

    async with app:
        handle = await app.start(bad)
        with pytest.raises(sw.RunFailedError) as info:
            await handle.result()
    assert info.value.error_type == "stalwart.errors.GraphError"
    assert says in str(info.value)


async def test_a_node_waits_for_a_signal_and_the_graph_resumes_after_parking() -> None:
    """A node that takes the context waits for a human's signal (parked in the store);
    the signal resumes the graph where it was, earlier nodes not run again."""
    calls: list[str] = []

    def write(d: Draft) -> dict[str, Any]:
        calls.append("write")
        return {"text": "draft"}

    async def review(ctx: sw.Context, d: Draft) -> dict[str, Any]:
        verdict = await ctx.wait_for_signal("review")
        return {"approved": verdict == "yes"}

    g = sw.Graph(Draft)
    g.node(write)
    g.node(review)
    g.edge(sw.START, "write")
    g.edge("write", "review")
    g.edge("review", sw.END)
    flow = g.compile()
    app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(T0, autojump=True), park_after=1.0)

    @app.workflow
    async def publish(ctx: sw.Context) -> Draft:
        return await flow.run(ctx, Draft())

    async with app:
        handle = await app.start(publish)
        await app.clock.sleep(10)
        assert await handle.status() == RunStatus.WAITING
        await handle.signal("review", "yes")
        final = await handle.result()
    assert final == Draft(text="draft", approved=True)
    assert calls == ["write"]


# -- build-time checks -------------------------------------------------------------------


def build(edges: list[tuple[Any, str]], nodes: tuple[str, ...] = ("a", "b"),
          branch: tuple[str, Any] | None = None) -> sw.Graph[Chat]:
    g = sw.Graph(Chat, name="bad")
    for name in nodes:
        g.node(name, lambda s: None)
    for src, dst in edges:
        g.edge(src, dst)
    if branch is not None:
        g.conditional_edge(branch[0], lambda s: "a", branch[1])
    return g


@pytest.mark.parametrize(("graph", "says"), [
    (build([(sw.START, "a"), ("a", "c"), ("b", sw.END)]),
     "names a node that does not exist: 'c'"),
    (build([(sw.START, "a"), ("a", "b"), ("b", "a")]), "no path from 'a' to END"),
    (build([(sw.START, "a"), ("a", sw.END), ("b", sw.END)]),
     "node 'b' cannot be reached from START"),
    (build([("a", "b"), ("b", sw.END)]), "nothing leaves START"),
    (build([(sw.START, "a"), ("a", sw.END)], nodes=("a", "b")),
     "node 'b' has no outgoing edge"),
    (build([(sw.START, "a"), ("b", sw.END)], branch=("a", None)),
     "does not declare its targets"),
    (build([(sw.START, "a"), ("b", sw.END)], branch=("a", ["b", "zz"])),
     "names a node that does not exist: 'zz'"),
    (build([(sw.START, "a"), ("a", sw.START), ("b", sw.END)]), "leads to START"),
])
def test_a_graph_that_cannot_run_is_refused_at_compile(graph: sw.Graph[Chat],
                                                       says: str) -> None:
    """An edge to a missing node, no path to END, an unreachable node, no entry, a dead
    end, undeclared or unknown router targets: GraphBuildError at compile(), listing
    the problem; nothing runs."""
    with pytest.raises(sw.GraphBuildError) as info:
        graph.compile()
    assert any(says in p for p in info.value.problems), info.value.problems
    assert says in str(info.value)
    assert isinstance(info.value, sw.ConfigurationError)


def test_bad_nodes_and_states_are_refused_when_added() -> None:
    """A state that is not a model, a reserved or duplicate node name, a sync node that
    takes the context, max_steps < 1: GraphBuildError at once."""
    with pytest.raises(sw.GraphBuildError):
        sw.Graph(dict)  # type: ignore[type-var]
    g = sw.Graph(Chat)
    g.node("a", lambda s: None)
    with pytest.raises(sw.GraphBuildError, match="already has a node 'a'"):
        g.node("a", lambda s: None)
    with pytest.raises(sw.GraphBuildError, match="reserved"):
        g.node(sw.END, lambda s: None)
    with pytest.raises(sw.GraphBuildError, match="must be an async function"):
        g.node("c", lambda ctx, s: None)
    g.edge(sw.START, "a")
    g.edge("a", sw.END)
    with pytest.raises(sw.GraphBuildError, match="max_steps"):
        g.compile(max_steps=0)


def test_to_mermaid_draws_edges_joins_and_conditional_edges() -> None:
    """The drawing names every node, solid edges, joins and labelled dotted branches."""
    assert fan_graph().to_mermaid() == (
        "flowchart TD\n"
        "    __start__([__start__])\n"
        '    plan["plan"]\n'
        '    slow["slow"]\n'
        '    quick["quick"]\n'
        '    quick2["quick2"]\n'
        '    merge["merge"]\n'
        "    __end__([__end__])\n"
        "    __start__ --> plan\n"
        "    quick --> quick2\n"
        "    merge --> __end__\n"
        "    slow --> merge\n"
        "    quick2 --> merge\n"
        "    plan -.-> slow\n"
        "    plan -.-> quick\n")
    g = sw.Graph(Chat)
    g.node("agent", lambda s: None)
    g.edge(sw.START, "agent")
    g.conditional_edge("agent", lambda s: "go", {"go": "agent", "stop": sw.END})
    assert "    agent -.->|go| agent\n    agent -.->|stop| __end__\n" in g.to_mermaid()
    assert g.compile().to_mermaid() == g.to_mermaid()


async def test_a_graph_runs_on_the_real_stores(store_url: str) -> None:
    """The loop on SQLite and PostgreSQL: the same final state and deltas."""
    flow = loop_graph(12)
    app = sw.Runtime(store_url)

    @app.workflow
    async def chat_on_store(ctx: sw.Context, state: Chat) -> Chat:
        return await flow.run(ctx, state)

    async with app:
        handle = await app.start(chat_on_store, Chat())
        final = await handle.result()
        events = await app.events(handle.run_id)
    assert final.messages == [f"turn {i}" for i in range(12)]
    assert len(node_steps(events)) == 12

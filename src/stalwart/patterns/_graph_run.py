"""Running a compiled state graph as workflow code: supersteps, deltas, joins.

A run goes in *supersteps* (Pregel's, as LangGraph's): every node due runs, their
updates are joined into the state, then the edges of the nodes that ran say which nodes
are due next; the run ends when no node is due (every branch reached ``END``). A
superstep of one node runs it in the workflow's own step sequence; several run as the
branches of one ``ctx.gather``, so their step ids never depend on which finishes first.

**What is journaled.** A plain node ``fn(state)`` is one step, ``node:{name}``, that calls
it and returns the node's update as a *delta* (:mod:`._delta`); a node that takes the
context runs its own steps and then records its delta in a ``node:{name}`` step. A delta
holds, for each field the node updated, either the update given to the field's reducer
(``["r", value]``: the new messages, not the conversation) or the structural difference
from the field's value before the superstep (``["+", tail]`` for a list or string that
grew, ``["=", value]``, ...). The state itself is never journaled per step: the input is
the run's (or a step's) input, and a replay rebuilds every superstep's state by applying
the recorded deltas in order, running reducers again (they must be pure).

**The join is deterministic.** Parallel nodes' deltas are applied in the order of the
nodes' declaration, whatever order they finished in: a reducer field combines them in
that order; two nodes setting one field without a reducer is an error
(:class:`~stalwart.errors.GraphError`), as LangGraph's ``InvalidUpdateError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, final

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..errors import GraphError, GraphStepLimitError
from ._delta import diff, patch
from ._graph_parts import END, START, Branch, Join, Node, S

if TYPE_CHECKING:
    from .._context import Context

__all__ = ["CompiledGraph", "run_graph"]


@dataclass(frozen=True, slots=True)
class _Field:
    adapter: TypeAdapter[Any]
    reducer: Any  # Callable[[Any, Any], Any] | None


_FIELDS: dict[type[BaseModel], dict[str, _Field]] = {}


def fields_of(model: type[BaseModel]) -> dict[str, _Field]:
    """Each field's adapter and reducer (the first callable in its ``Annotated``
    metadata), computed once per model."""
    found = _FIELDS.get(model)
    if found is None:
        found = {}
        for name, info in model.model_fields.items():
            reducer = next((m for m in info.metadata if callable(m)
                            and not isinstance(m, type)), None)
            found[name] = _Field(TypeAdapter(info.annotation), reducer)
        _FIELDS[model] = found
    return found


def to_delta(model: type[BaseModel], cur: Mapping[str, Any], update: Any,
             node: str) -> dict[str, list[Any]]:
    """The delta of ``update`` (a node's return) against the state ``cur`` (JSON)."""
    fields = fields_of(model)
    if update is None:
        return {}
    if isinstance(update, BaseModel):
        if not isinstance(update, model):
            raise GraphError(f"node {node!r} returned a {type(update).__name__}, not a "
                             f"{model.__name__} or a dict of its fields", node=node)
        data = update.model_dump(mode="json")
        return {k: op for k, v in data.items() if (op := diff(cur.get(k), v)) is not None}
    if not isinstance(update, Mapping):
        raise GraphError(f"node {node!r} returned {type(update).__name__}; a node returns "
                         f"a dict of {model.__name__} fields, the state, or None", node=node)
    out: dict[str, list[Any]] = {}
    for key, value in update.items():
        spec = fields.get(key)
        if spec is None:
            raise GraphError(f"node {node!r} updated {key!r}, which is not a field of "
                             f"{model.__name__} ({', '.join(fields)})", node=node)
        try:
            js = spec.adapter.dump_python(spec.adapter.validate_python(value), mode="json")
        except ValidationError as exc:
            raise GraphError(f"node {node!r}: its update of {key!r} is not valid: "
                             f"{exc.errors(include_url=False)}", node=node) from None
        if spec.reducer is not None:
            out[key] = ["r", js]
        else:
            op = diff(cur.get(key), js)
            if op is not None:
                out[key] = op
    return out


def apply_deltas(model: type[BaseModel], cur: dict[str, Any],
                 deltas: Sequence[tuple[str, Mapping[str, list[Any]]]]) -> dict[str, Any]:
    """The state after a superstep whose nodes returned ``deltas`` (``(node, delta)`` in
    declaration order): reducer updates combined in that order, other changes patched
    against the superstep's starting state; two writers of one plain field conflict."""
    fields = fields_of(model)
    new = dict(cur)
    writers: dict[str, list[tuple[str, bool]]] = {}
    for node, delta in deltas:
        for key, op in delta.items():
            writers.setdefault(key, []).append((node, op[0] == "r"))
    for key, who in writers.items():
        if len(who) > 1 and not all(is_reduced for _, is_reduced in who):
            names = ", ".join(repr(n) for n, _ in who)
            raise GraphError(f"nodes {names} all updated {key!r} in one superstep, and "
                             f"{key!r} has no reducer to combine them (annotate it, e.g. "
                             "Annotated[list[...], operator.add])", node=who[-1][0])
    for node, delta in deltas:
        for key, op in delta.items():
            spec = fields.get(key)
            if spec is None:
                raise GraphError(f"the journal holds an update of {key!r} from node "
                                 f"{node!r}, which is not a field of {model.__name__}",
                                 node=node)
            if op[0] == "r":
                if spec.reducer is None:
                    raise GraphError(f"the journal holds a reducer update of {key!r}, "
                                     "which has no reducer", node=node)
                old = spec.adapter.validate_python(new.get(key))
                combined = spec.reducer(old, spec.adapter.validate_python(op[1]))
                new[key] = spec.adapter.dump_python(combined, mode="json")
            else:
                new[key] = patch(cur.get(key), op)
    return new


# -- the steps ----------------------------------------------------------------------------


async def _async_node(model: type[BaseModel], node: Node, cur: dict[str, Any],
                      lazy: _Lazy) -> dict[str, Any]:
    return to_delta(model, cur, await node.fn(lazy.state()), node.name)


def _sync_node(model: type[BaseModel], node: Node, cur: dict[str, Any],
               lazy: _Lazy) -> dict[str, Any]:
    return to_delta(model, cur, node.fn(lazy.state()), node.name)


async def _recorded(delta: dict[str, Any]) -> dict[str, Any]:
    return delta


@dataclass(slots=True)
class _Superstep:
    """The state at the start of a superstep: its JSON, and the model built from it on
    first need (routers, live nodes); replayed plain nodes need none."""

    model: type[BaseModel]
    cur: dict[str, Any]
    _snap: BaseModel | None = None

    def snap(self) -> BaseModel:
        if self._snap is None:
            self._snap = self.model.model_validate(self.cur)
        return self._snap

    def for_node(self, shared: bool) -> BaseModel:
        """The state a node is given: its own copy when nodes run side by side."""
        return self.snap().model_copy(deep=True) if shared else self.snap()


async def _run_node(graph: CompiledGraph[Any], ctx: Context, node: Node, at: _Superstep,
                    shared: bool) -> dict[str, Any]:
    name = f"node:{node.name}"
    if node.takes_ctx:
        update = await node.fn(ctx, at.for_node(shared))
        delta = to_delta(graph.state, at.cur, update, node.name)
        return await ctx.step(_recorded, delta, name=name)
    fn = _async_node if node.is_async else _sync_node
    return await ctx.step(fn, graph.state, node, at.cur, _Lazy(at, shared), name=name)


class _Lazy:
    """Hands a plain node its state only when the step runs (a replayed step does not)."""

    __slots__ = ("at", "shared")

    def __init__(self, at: _Superstep, shared: bool) -> None:
        self.at, self.shared = at, shared

    def state(self) -> BaseModel:
        return self.at.for_node(self.shared)


# -- routing ------------------------------------------------------------------------------


def _route(graph: CompiledGraph[Any], source: str, at: _Superstep) -> list[str]:
    """Where the edges of ``source`` lead after the superstep that ran it."""
    out = [dst for src, dst in graph.edges if src == source]
    for br in graph.branches:
        if br.source != source:
            continue
        picked = br.router(at.snap())
        for value in ([picked] if isinstance(picked, str) else list(picked)
                      if isinstance(picked, Sequence) else [picked]):
            dst = br.path_map.get(str(value)) if isinstance(value, str) else None
            if dst is None:
                raise GraphError(
                    f"the router after {source!r} returned {value!r}, which is not one of "
                    f"its declared targets ({', '.join(map(repr, br.path_map))})",
                    node=source)
            out.append(dst)
    return out


def _order(graph: CompiledGraph[Any], names: Sequence[str]) -> list[str]:
    """Due nodes, once each, in declaration order (END dropped)."""
    due = {n for n in names if n != END}
    return sorted(due, key=graph.order.__getitem__)


async def run_graph(graph: CompiledGraph[Any], ctx: Context, state: BaseModel,
                    max_steps: int) -> Any:
    """:meth:`CompiledGraph.run`; see the module docstring."""
    model = graph.state
    if not isinstance(state, model):
        try:
            state = model.model_validate(state)
        except ValidationError as exc:
            raise GraphError(f"graph {graph.name!r}: the initial state is not a valid "
                             f"{model.__name__}: {exc.errors(include_url=False)}",
                             node=START) from None
    at = _Superstep(model, state.model_dump(mode="json"), state)
    due = _order(graph, _route(graph, START, at))
    waiting: dict[int, set[str]] = {}
    supersteps = 0
    while due:
        supersteps += 1
        if supersteps > max_steps:
            raise GraphStepLimitError(
                f"graph {graph.name!r} did not reach END within {max_steps} supersteps "
                f"(next: {', '.join(due)}); raise max_steps if that many are meant",
                max_steps=max_steps, node=due[0])
        nodes = [graph.nodes[n] for n in due]
        if len(nodes) == 1:
            deltas = [await _run_node(graph, ctx, nodes[0], at, False)]
        else:
            deltas = await ctx.gather(*(_run_node(graph, ctx, n, at, True) for n in nodes))
        at = _Superstep(model, apply_deltas(model, at.cur, list(zip(due, deltas,
                                                                    strict=True))))
        after: list[str] = []
        for name in due:
            after += _route(graph, name, at)
            for i, join in enumerate(graph.joins):
                if name in join.sources:
                    seen = waiting.setdefault(i, set())
                    seen.add(name)
                    if seen >= set(join.sources):
                        after.append(join.target)
                        waiting[i] = set()
        due = _order(graph, after)
    return at.snap()


@final
class CompiledGraph(Generic[S]):
    """A checked graph (from :meth:`Graph.compile`); run it inside a workflow."""

    def __init__(self, state: type[S], name: str, max_steps: int, *,
                 nodes: Mapping[str, Node], edges: Sequence[tuple[str, str]],
                 branches: Sequence[Branch], joins: Sequence[Join], mermaid: str) -> None:
        self.state: type[S] = state
        self.name = name
        self.max_steps = max_steps
        self.nodes: dict[str, Node] = dict(nodes)
        self.edges: tuple[tuple[str, str], ...] = tuple(edges)
        self.branches: tuple[Branch, ...] = tuple(branches)
        self.joins: tuple[Join, ...] = tuple(joins)
        self.order = {n: i for i, n in enumerate(self.nodes)}
        self._mermaid = mermaid

    def __repr__(self) -> str:
        return f"<CompiledGraph {self.name} nodes={list(self.nodes)}>"

    async def run(self, ctx: Context, state: S, *, max_steps: int | None = None) -> S:
        """Run the graph from :data:`START` with ``state`` until every branch reached
        :data:`END`; returns the final state. Each node is a journaled step (or, for a
        node that takes the context, its own steps and then one for its update); a
        resumed run rebuilds the state from the journaled deltas.

        Raises:
            GraphStepLimitError: more than ``max_steps`` supersteps (default: the
                graph's).
            GraphError: a node's update or a router's answer does not fit the graph.
        """
        final: S = await run_graph(self, ctx, state,
                                   self.max_steps if max_steps is None else max_steps)
        return final

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart."""
        return self._mermaid

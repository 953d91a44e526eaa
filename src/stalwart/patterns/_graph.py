"""State graphs: nodes, edges, conditional edges and cycles over a typed state, run as
workflow code (LangGraph's model, on the durable core).

Build a :class:`Graph` over a Pydantic state model, add nodes (functions of the state
that return an update) and edges, and :meth:`Graph.compile` it: compiling checks the
graph and refuses one that cannot run as drawn (:class:`~stalwart.errors.GraphBuildError`
listing every problem): an edge from or to a node that does not exist, a conditional
edge whose targets are not declared, a node with no way out, a node that cannot be
reached from :data:`START`, or one from which :data:`END` cannot be reached (every run
through it would loop until ``max_steps``). The compiled graph runs inside a workflow,
``await flow.run(ctx, state)``; see :mod:`stalwart.patterns._graph_run` for how it
executes and what it journals.

Edges:

* ``graph.edge("a", "b")``: after ``a``, ``b`` runs;
* ``graph.edge(["a", "b"], "c")``: a join: ``c`` runs once both ``a`` and ``b`` have run
  since ``c`` last did (fan-in after a fan-out of branches of different lengths);
* ``graph.conditional_edge("a", router, targets)``: after ``a``, ``router(state)`` names
  the next node, :data:`END`, or a list of nodes (a fan-out: they run in parallel).
  ``targets`` declares what it may name: a list of node names, or a mapping from what
  the router returns to node names (LangGraph's ``path_map``); without it, the router's
  ``Literal[...]`` return annotation.

A node is ``fn(state) -> update`` (one journaled step: sync functions run in the
runtime's thread pool) or ``async fn(ctx, state) -> update`` (workflow code: it may call
models, tools, child runs, wait for a signal or an approval, and its update is journaled
after it). An update is a ``dict`` of fields, the state model itself, or ``None``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, final, get_args, get_origin

from pydantic import BaseModel

from ..errors import GraphBuildError
from ._graph_parts import END, START, Branch, Join, Node, S
from ._graph_run import CompiledGraph

if TYPE_CHECKING:
    pass

__all__ = ["END", "START", "CompiledGraph", "Graph"]

_RESERVED = (START, END)


@dataclass(slots=True)
class _Spec:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    branches: list[Branch] = field(default_factory=list)
    joins: list[Join] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _node_kind(name: str, fn: Callable[..., Any]) -> tuple[bool, bool]:
    """(takes_ctx, is_async) of a node function; raises GraphBuildError if unusable."""
    if not callable(fn):
        raise GraphBuildError(f"graph node {name!r}: {fn!r} is not callable",
                              problems=[f"node {name!r} is not callable"])
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    except (TypeError, ValueError):
        params = []
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))  # noqa: B004 - async callable objects
    if len(params) == 2:
        if not is_async:
            raise GraphBuildError(
                f"graph node {name!r} takes (ctx, state) and must be an async function",
                problems=[f"node {name!r} takes the context but is not async"])
        return True, True
    if len(params) == 1:
        return False, is_async
    raise GraphBuildError(
        f"graph node {name!r} must take (state) or (ctx, state), not "
        f"{len(params)} required positional parameters",
        problems=[f"node {name!r} has {len(params)} required parameters"])


def _targets_of(router: Callable[..., Any], targets: Any) -> dict[str, str] | None:
    """What a router may return, mapped to node names: from ``targets``, else from its
    ``Literal[...]`` return annotation (``None``: undeclared)."""
    if targets is None:
        try:
            ret = typing.get_type_hints(router).get("return")
        except Exception:  # unresolvable annotations, a builtin, a lambda's none
            return None
        if get_origin(ret) is Literal:
            return {str(v): str(v) for v in get_args(ret)}
        return None
    if isinstance(targets, Mapping):
        return {str(k): str(v) for k, v in targets.items()}
    if isinstance(targets, str):
        return {targets: targets}
    return {str(t): str(t) for t in targets}


@final
class Graph(Generic[S]):
    """A state graph under construction (LangGraph's ``StateGraph``).

    Args:
        state: the Pydantic model of the state. A field annotated with a callable,
            ``Annotated[list[Msg], operator.add]``, has that *reducer*: an update of the
            field is combined with its value (``add(old, update)``) instead of replacing
            it, which is also how updates of parallel nodes are joined.
        name: names the graph in errors and in its Mermaid drawing.

    Example::

        graph = sw.Graph(State)
        graph.node("agent", agent)
        graph.edge(sw.START, "agent")
        graph.conditional_edge("agent", should_continue, ["agent", sw.END])
        flow = graph.compile(max_steps=50)
    """

    def __init__(self, state: type[S], *, name: str = "graph") -> None:
        if not (isinstance(state, type) and issubclass(state, BaseModel)):
            raise GraphBuildError(f"Graph() needs a pydantic model class as its state, "
                                  f"not {state!r}", problems=["the state is not a model"])
        self.state = state
        self.name = name
        self._spec = _Spec()

    def node(self, name: str | Callable[..., Any], fn: Callable[..., Any] | None = None,
             ) -> Any:
        """Add a node: ``graph.node("name", fn)``, ``graph.node(fn)`` (named after the
        function) or ``@graph.node`` as a decorator. Returns ``fn``."""
        if callable(name) and fn is None:
            fn, name = name, getattr(name, "__name__", repr(name))
        if fn is None:
            raise GraphBuildError(f"graph.node({name!r}) needs the node's function",
                                  problems=[f"node {name!r} has no function"])
        label = str(name)
        if label in _RESERVED or not label:
            raise GraphBuildError(f"{label!r} cannot name a node (reserved)",
                                  problems=[f"the node name {label!r} is reserved"])
        if label in self._spec.nodes:
            raise GraphBuildError(f"graph {self.name!r} already has a node {label!r}",
                                  problems=[f"two nodes are named {label!r}"])
        takes_ctx, is_async = _node_kind(label, fn)
        self._spec.nodes[label] = Node(label, fn, takes_ctx, is_async)
        return fn

    def edge(self, source: str | Sequence[str], target: str) -> None:
        """After ``source`` runs, ``target`` runs. A list of sources is a join: the
        target runs once each of them has run since the target last did."""
        if isinstance(source, str):
            self._spec.edges.append((source, target))
            return
        sources = tuple(source)
        if not sources:
            self._spec.problems.append(f"a join edge to {target!r} has no sources")
            return
        self._spec.joins.append(Join(sources, target))

    def conditional_edge(self, source: str, router: Callable[[S], Any],
                         targets: Sequence[str] | Mapping[Any, str] | None = None) -> None:
        """After ``source``, ``router(state)`` says where to go: a node name, ``END``
        or a list of them (they run in parallel). ``targets`` declares what it may
        return (names, or a mapping of its return values to names); by default its
        ``Literal[...]`` return annotation."""
        path_map = _targets_of(router, targets)
        if path_map is None:
            self._spec.problems.append(
                f"the conditional edge from {source!r} does not declare its targets: "
                "pass targets=[...] or annotate the router's return as Literal[...]")
            path_map = {}
        self._spec.branches.append(Branch(source, router, path_map))

    def problems(self) -> list[str]:
        """What :meth:`compile` would refuse, one line each (empty: nothing)."""
        return check(self._spec)

    def compile(self, *, max_steps: int = 100) -> CompiledGraph[S]:
        """Check the graph and return it ready to run.

        ``max_steps`` bounds the supersteps of one run of the graph (a superstep runs
        every node due at once); a run that would take more fails with
        :class:`~stalwart.errors.GraphStepLimitError`.

        Raises:
            GraphBuildError: the graph cannot run as drawn; its ``problems`` list all.
        """
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise GraphBuildError(f"graph {self.name!r}: max_steps must be an int >= 1, "
                                  f"not {max_steps!r}", problems=["max_steps < 1"])
        found = self.problems()
        if found:
            raise GraphBuildError(
                f"graph {self.name!r} cannot run as drawn: " + "; ".join(found),
                problems=found)
        spec = self._spec
        return CompiledGraph(self.state, self.name, max_steps, nodes=spec.nodes,
                             edges=spec.edges, branches=spec.branches, joins=spec.joins,
                             mermaid=mermaid(spec))

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart (solid: edges; dotted: conditional)."""
        return mermaid(self._spec)


# -- checks ---------------------------------------------------------------------------


def _successors(spec: _Spec) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {n: set() for n in (*spec.nodes, START, END)}
    for src, dst in spec.edges:
        out.setdefault(src, set()).add(dst)
    for br in spec.branches:
        out.setdefault(br.source, set()).update(br.path_map.values())
    for join in spec.joins:
        for src in join.sources:
            out.setdefault(src, set()).add(join.target)
    return out


def _reach(start: str, succ: Mapping[str, Iterable[str]]) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in succ.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def check(spec: _Spec) -> list[str]:
    """Every reason the graph cannot run as drawn (see the module docstring)."""
    problems = list(spec.problems)
    known = set(spec.nodes)

    def name_ok(name: str, role: str, where: str) -> bool:
        if role == "source" and name == END:
            problems.append(f"{where} starts at END")
            return False
        if role == "target" and name == START:
            problems.append(f"{where} leads to START")
            return False
        if name not in known and name not in _RESERVED:
            problems.append(f"{where} names a node that does not exist: {name!r}")
            return False
        return True

    for src, dst in spec.edges:
        name_ok(src, "source", f"the edge {src!r} -> {dst!r}")
        name_ok(dst, "target", f"the edge {src!r} -> {dst!r}")
    for br in spec.branches:
        name_ok(br.source, "source", f"the conditional edge from {br.source!r}")
        for dst in br.path_map.values():
            name_ok(dst, "target", f"the conditional edge from {br.source!r}")
    for join in spec.joins:
        for src in join.sources:
            name_ok(src, "source", f"the join {list(join.sources)!r} -> {join.target!r}")
            if src == START:
                problems.append(f"the join to {join.target!r} waits for START")
        name_ok(join.target, "target", f"the join {list(join.sources)!r} -> {join.target!r}")
    if problems:
        return problems  # reachability over unknown names would only repeat them

    succ = _successors(spec)
    if not succ[START]:
        problems.append("nothing leaves START: add graph.edge(START, 'first node')")
        return problems
    for name in spec.nodes:
        if not succ[name]:
            problems.append(f"node {name!r} has no outgoing edge (add one, to END if it "
                            "is the last)")
    reachable = _reach(START, succ)
    for name in spec.nodes:
        if name not in reachable:
            problems.append(f"node {name!r} cannot be reached from START")
    preds: dict[str, set[str]] = {}
    for src, dsts in succ.items():
        for dst in dsts:
            preds.setdefault(dst, set()).add(src)
    ends = _reach(END, preds)
    for name in [START, *spec.nodes]:
        if name in reachable and name not in ends:
            problems.append(f"there is no path from {name!r} to END")
    return problems


# -- drawing --------------------------------------------------------------------------


def _mid(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def mermaid(spec: _Spec) -> str:
    """A Mermaid ``flowchart`` of the graph (as LangGraph draws: start and end as
    rounded terminals, conditional edges dotted and labelled with the router's value
    where it differs from the target's name, joins as edges from each source)."""
    lines = ["flowchart TD", f"    {_mid(START)}([{START}])"]
    lines += [f'    {_mid(n)}["{n}"]' for n in spec.nodes]
    lines.append(f"    {_mid(END)}([{END}])")
    for src, dst in spec.edges:
        lines.append(f"    {_mid(src)} --> {_mid(dst)}")
    for join in spec.joins:
        for src in join.sources:
            lines.append(f"    {_mid(src)} --> {_mid(join.target)}")
    for br in spec.branches:
        for key, dst in br.path_map.items():
            label = f"|{key}|" if key != dst else ""
            lines.append(f"    {_mid(br.source)} -.->{label} {_mid(dst)}")
    return "\n".join(lines) + "\n"

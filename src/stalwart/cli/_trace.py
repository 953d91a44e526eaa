"""``stalwart runs trace``: a run as a waterfall tree, read from its journal.

The tree nests steps as the run nested them: a ``gather`` holds one node per branch, a
branch holds its steps, and consecutive model turns of one agent (``chat:{agent}``) with
the tool calls they asked for are grouped under that agent. Each line shows when the
step ran relative to the run (the bar), how long it took, its attempts, tokens and cost.

Times: model and tool calls journal their start (``call_timed``); other steps are placed
where :mod:`._timeline` infers them (after the step before them in the same scope).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from ..engine._cost import CallUsage, PriceTable, call_usages
from ..engine._timetravel import ForkInfo, fork_info
from ..store._base import Event, RunRecord
from ._common import fmt_duration
from ._timeline import Step, read_story

__all__ = ["TraceNode", "build_trace", "fmt_cost", "render_trace"]

BAR = 32


@dataclass
class TraceNode:
    """One line of the waterfall."""

    label: str
    kind: str
    """``run``, ``gather``, ``branch``, ``agent``, ``model``, ``tool``, ``step`` or
    ``repair`` (a malformed tool call of a model turn, sent back to the model) or
    ``refused`` (a tool call least privilege refused: not executed, audited),
    ``context`` (where the messages a model turn saw came from) or ``window`` (what the
    agent's context window moved before the call, and why)."""
    step_id: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    outcome: str = ""
    attempts: int | None = None
    tokens: int = 0
    cost: float | None = 0.0
    errors: tuple[str, ...] = ()
    children: list[TraceNode] = field(default_factory=list)

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return max(0.0, self.ended_at - self.started_at)

    def absorb(self, child: TraceNode) -> None:
        """Add a child and widen this node's span, tokens and cost to cover it."""
        self.children.append(child)
        if child.started_at is not None:
            self.started_at = (child.started_at if self.started_at is None
                               else min(self.started_at, child.started_at))
        if child.ended_at is not None:
            self.ended_at = (child.ended_at if self.ended_at is None
                             else max(self.ended_at, child.ended_at))
        self.tokens += child.tokens
        self.cost = None if self.cost is None or child.cost is None else self.cost + child.cost

    def as_json(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "step_id": self.step_id,
                "started_at": self.started_at, "ended_at": self.ended_at,
                "duration": self.duration, "outcome": self.outcome,
                "attempts": self.attempts, "tokens": self.tokens, "cost": self.cost,
                "errors": list(self.errors),
                "children": [c.as_json() for c in self.children]}


def fmt_cost(cost: float | None) -> str:
    """Dollars, or ``?`` when unknown (never shown as zero)."""
    if cost is None:
        return "?"
    if cost == 0:
        return "$0"
    if cost < 0.0001:  # a real cost too small for 4 places: not shown as zero
        return f"${cost:.2g}" if cost >= 1e-9 else "<$1e-09"
    return f"${cost:.4f}" if cost < 1 else f"${cost:.2f}"


def _leaf(st: Step, call: CallUsage | None) -> TraceNode:
    if call is None:
        return TraceNode(label=st.name, kind="step", step_id=st.step_id,
                         started_at=st.started_at, ended_at=st.ended_at, outcome=st.outcome,
                         attempts=1 if st.kind == "step" else None)
    started = call.started_at if call.started_at is not None else st.started_at
    if started is not None and st.started_at is not None and call.reused:
        started = st.started_at  # the origin's time: in this fork it took none
    label = st.name
    if call.kind == "model":
        label = f"chat {call.key}"
    elif st.name.startswith("tool:"):
        label = f"execute_tool {st.name[len('tool:'):]}"
    outcome = st.outcome + (" (reused)" if call.reused else "")
    fell_from = list(dict.fromkeys(k for k, _, _ in call.failures if k != call.key))
    if fell_from and call.ok:
        outcome += f" (fallback after {', '.join(fell_from)})"
    if not call.made:
        outcome += " (refused, not sent)"
    node = TraceNode(label=label, kind=call.kind, step_id=st.step_id, started_at=started,
                     ended_at=st.ended_at, outcome=outcome, attempts=call.attempts,
                     tokens=call.tokens, cost=call.cost, errors=call.errors)
    # The malformed tool calls of this turn, sent back to the model as tool errors.
    node.children = [TraceNode(label=f"repair {line}", kind="repair",
                               outcome="sent back to the model") for line in st.repairs]
    if st.origins:
        node.children.insert(0, TraceNode(label="context " + ", ".join(st.origins),
                                          kind="context"))
    node.children += [TraceNode(label=f"refused {line}", kind="refused",
                                outcome="not executed (audited)") for line in st.refusals
                      if ": approved:" not in line and ": not approved:" not in line]
    node.children += [TraceNode(label=f"held {line}", kind="refused",
                                outcome="approval decided (audited)")
                      for line in st.refusals
                      if ": approved:" in line or ": not approved:" in line]
    # What the context window moved before this call, and why.
    node.children[:0] = [TraceNode(label=f"window {line}", kind="window")
                         for line in st.window]
    return node


def _requested_tools(payload: str | None) -> set[str]:
    try:
        calls = json.loads(payload or "{}").get("tool_calls") or ()
        return {f"tool:{c.get('name')}" for c in calls}
    except (ValueError, AttributeError):
        return set()


def build_trace(run: RunRecord, events: list[Event], prices: PriceTable) -> TraceNode:
    """The waterfall tree of a run."""
    story = read_story(run, events)
    calls = {c.step_id: c for c in call_usages(events, prices)}
    root = TraceNode(label=f"run {run.workflow}", kind="run", started_at=run.created_at,
                     ended_at=run.updated_at if run.is_terminal else None,
                     outcome=str(run.status))
    containers: dict[str, TraceNode] = {"": root}
    open_agent: dict[str, tuple[TraceNode, set[str]]] = {}

    def container(prefix: str) -> TraceNode:
        found = containers.get(prefix)
        if found is not None:
            return found
        gather_id, _, branch = prefix.rpartition("/")
        gather = containers.get(gather_id)
        if gather is None:
            outer = container(gather_id.rpartition("/")[0])
            gather = TraceNode(label="gather", kind="gather", step_id=gather_id)
            outer.absorb(gather)
            open_agent.pop(gather_id.rpartition("/")[0], None)
            containers[gather_id] = gather
        node = TraceNode(label=f"branch {branch}", kind="branch", step_id=prefix)
        gather.absorb(node)
        containers[prefix] = node
        return node

    for st in story.steps:
        prefix = st.step_id.rpartition("/")[0]
        parent = container(prefix)
        leaf = _leaf(st, calls.get(st.step_id))
        current = open_agent.get(prefix)
        if st.name.startswith("chat:"):
            agent_name = st.name[len("chat:"):]
            if current is None or current[0].label != f"invoke_agent {agent_name}":
                agent = TraceNode(label=f"invoke_agent {agent_name}", kind="agent")
                parent.absorb(agent)
                current = (agent, set())
            wanted = _requested_tools(next((e.payload for e in events
                                            if e.step_id == st.step_id
                                            and e.kind == "step_completed"), None))
            open_agent[prefix] = (current[0], wanted)
            _widen(current[0], leaf)
            _widen_up(parent, current[0])
            continue
        if st.name.startswith("tool:") and current is not None and st.name in current[1]:
            _widen(current[0], leaf)
            _widen_up(parent, current[0])
            continue
        open_agent.pop(prefix, None)
        parent.absorb(leaf)
    _refresh(root)
    return root


def _widen(node: TraceNode, child: TraceNode) -> None:
    node.absorb(child)


def _widen_up(parent: TraceNode, child: TraceNode) -> None:
    """An agent node grew after it was added: let its parent's span follow."""
    if child.started_at is not None:
        parent.started_at = (child.started_at if parent.started_at is None
                             else min(parent.started_at, child.started_at))
    if child.ended_at is not None:
        parent.ended_at = (child.ended_at if parent.ended_at is None
                           else max(parent.ended_at, child.ended_at))


def _refresh(node: TraceNode) -> None:
    """Recompute the tokens and cost of grouping nodes from their leaves."""
    if not node.children:
        return
    for child in node.children:
        _refresh(child)
    if node.kind in ("run", "gather", "branch", "agent"):
        node.tokens = sum(c.tokens for c in node.children)
        costs = [c.cost for c in node.children]
        node.cost = None if any(c is None for c in costs) else sum(
            c for c in costs if c is not None)
        for c in node.children:
            _widen_up(node, c)


def _bar(node: TraceNode, t0: float, total: float) -> Text:
    if node.started_at is None or total <= 0:
        return Text(" " * BAR)
    start = min(BAR - 1, int((node.started_at - t0) / total * BAR))
    width = 1
    if node.ended_at is not None:
        width = max(1, round((node.ended_at - node.started_at) / total * BAR))
    width = min(width, BAR - start)
    style = {"model": "magenta", "tool": "cyan", "agent": "blue", "run": "green"}.get(
        node.kind, "white")
    if "failed" in node.outcome:
        style = "red"
    return Text(" " * start + "█" * width + " " * (BAR - start - width), style=style)


def _line(node: TraceNode, t0: float, total: float, label_width: int, depth: int = 0,
          ) -> Text:
    label_width = max(8, label_width - 4 * depth)  # the tree's guides take 4 per level
    label = (f"{node.step_id} " if node.step_id else "") + node.label
    label = label if len(label) <= label_width else label[:label_width - 1] + "…"
    parts = [Text(label.ljust(label_width)), Text(" "), _bar(node, t0, total),
             Text(f" {fmt_duration(node.duration):>7}")]
    extra = []
    if node.attempts is not None and node.attempts > 1:
        extra.append(f"{node.attempts} attempts")
    if node.tokens:
        extra.append(f"{node.tokens} tok")
    if node.kind in ("model", "agent", "run") and (node.tokens or node.cost is None):
        extra.append(fmt_cost(node.cost))
    if node.outcome and node.kind not in ("gather", "branch", "agent"):
        extra.append(node.outcome)
    if node.errors:
        extra.append("errors: " + ", ".join(node.errors))
    text = Text.assemble(*parts)
    if extra:
        text.append("  " + "  ".join(extra),
                    style="red" if "failed" in node.outcome else "dim")
    return text


def render_trace(out: Console, root: TraceNode, fork: ForkInfo | None = None) -> None:
    """Print the waterfall tree."""
    t0 = root.started_at or 0.0
    end = root.ended_at if root.ended_at is not None else max(
        (n.ended_at for n in _walk(root) if n.ended_at is not None), default=t0)
    total = max(end - t0, 1e-9)
    width = min(56, max(20, max(len((n.step_id or "") + " " + n.label) + 4 * d
                                for n, d in _walk_depth(root, 0))))
    tree = Tree(_line(root, t0, total, width), guide_style="dim")

    def add(branch: Tree, node: TraceNode, depth: int) -> None:
        for child in node.children:
            add(branch.add(_line(child, t0, total, width, depth)), child, depth + 1)

    add(tree, root, 1)
    if fork is not None:
        out.print(Text(f"forked from {fork.origin} at step {fork.at}"
                       + (f" with model {fork.model}" if fork.model else ""), style="dim"))
    out.print(tree)


def _walk_depth(node: TraceNode, depth: int) -> list[tuple[TraceNode, int]]:
    out = [(node, depth)]
    for c in node.children:
        out.extend(_walk_depth(c, depth + 1))
    return out


def _walk(node: TraceNode) -> list[TraceNode]:
    out = [node]
    for c in node.children:
        out.extend(_walk(c))
    return out


def trace_json(root: TraceNode, events: list[Event]) -> dict[str, Any]:
    info = fork_info(events)
    return {"trace": root.as_json(), "forked_from": info.as_json() if info else None}

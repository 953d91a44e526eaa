"""What the dashboard draws, as plain data: the waterfall's rows and marks, the cost
plot's bars, the tree of child runs.

Pure functions over what the CLI's views already compute (``build_trace``,
``read_story``, ``call_usages``): the rules of what a run did live there, once; this
module only places them on a page.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

from ...engine._cost import PriceTable, call_usages
from ...store._base import Event, EventKind, RunRecord
from .._timeline import Execution, Step
from .._trace import TraceNode

__all__ = ["Conversation", "CostBar", "CostPlot", "Mark", "Message", "Waterfall", "WaterfallRow",
           "conversations", "cost_plot", "waterfall"]

WIDTH = 1000.0
"""The waterfall's and the plot's SVG width, in user units."""
LABEL = 380.0
"""The waterfall's label column."""
ROW = 22.0
PLOT_TOP = 18.0
"""The cost plot's band above its tallest bar, for its caption."""


@dataclass(frozen=True, slots=True)
class WaterfallRow:
    """One node of the trace tree, placed."""

    depth: int
    label: str
    kind: str
    step_id: str | None
    x: float
    """The bar's left edge, in SVG units (``LABEL`` .. ``WIDTH``)."""
    width: float
    y: float
    duration: float | None
    outcome: str
    attempts: int | None
    tokens: int
    cost: float | None
    errors: tuple[str, ...]
    flags: tuple[str, ...]
    """What to mark: ``retried``, ``failed``, ``fallback``, ``breaker`` (a call an open
    breaker rejected), ``refused`` (a budget stop), ``reused`` (from a fork's origin),
    ``parked`` (a sleep or a wait), ``running``; a row of kind ``refused`` is a tool call
    least privilege refused (or held for approval), ``context`` the origins a model turn
    saw, ``repair`` a malformed tool call sent back."""


@dataclass(frozen=True, slots=True)
class Mark:
    """A vertical line across the waterfall: where an execution was cut short (a crash
    or a lost lease) and taken over."""

    x: float
    label: str


@dataclass(frozen=True, slots=True)
class Waterfall:
    rows: tuple[WaterfallRow, ...]
    marks: tuple[Mark, ...]
    height: float
    span: float
    """Seconds from the run's creation to its last known moment."""


def _flags(node: TraceNode) -> tuple[str, ...]:
    out = []
    if node.attempts is not None and node.attempts > 1:
        out.append("retried")
    if "failed" in node.outcome or "timed out" in node.outcome:
        out.append("failed")
    if "fallback" in node.outcome:
        out.append("fallback")
    if any("CircuitOpen" in e for e in node.errors):
        out.append("breaker")
    if "refused" in node.outcome or node.kind == "refused":
        out.append("refused")
    if "reused" in node.outcome:
        out.append("reused")
    if node.outcome in ("sleeping", "slept", "waiting", "received"):
        out.append("parked")
    if node.outcome in ("running", "interrupted"):
        out.append(node.outcome)
    return tuple(out)


def _walk(node: TraceNode, depth: int) -> list[tuple[TraceNode, int]]:
    out = [(node, depth)]
    for child in node.children:
        out.extend(_walk(child, depth + 1))
    return out


def waterfall(root: TraceNode, executions: list[Execution], *, now: float) -> Waterfall:
    """The rows of ``root`` (from ``build_trace``) on a time axis from the run's creation
    to its end (``now`` while it runs), with a mark where each interrupted execution was
    taken over by the next."""
    nodes = _walk(root, 0)
    t0 = root.started_at or 0.0
    ends = [n.ended_at for n, _ in nodes if n.ended_at is not None]
    end = root.ended_at if root.ended_at is not None else max([now, *ends])
    span = max(end - t0, 1e-9)
    scale = (WIDTH - LABEL) / span

    def x_of(t: float) -> float:
        return LABEL + min(max(t - t0, 0.0), span) * scale

    rows = []
    for i, (node, depth) in enumerate(nodes):
        if node.started_at is None:
            x, w = LABEL, 0.0
        else:
            x = x_of(node.started_at)
            stop = node.ended_at if node.ended_at is not None else end
            w = max(2.0, x_of(stop) - x)
            w = min(w, WIDTH - x) if x < WIDTH else 2.0
        label = (f"{node.step_id} " if node.step_id else "") + node.label
        rows.append(WaterfallRow(
            depth=depth, label=label, kind=node.kind, step_id=node.step_id, x=x, width=w,
            y=i * ROW, duration=node.duration, outcome=node.outcome,
            attempts=node.attempts, tokens=node.tokens, cost=node.cost,
            errors=node.errors, flags=_flags(node)))
    marks = []
    for ex, nxt in itertools.pairwise(executions):
        if ex.ended == "interrupted":
            marks.append(Mark(x=x_of(nxt.at), label=f"crash: #{ex.number} taken over by "
                                                    f"#{nxt.number}"))
    return Waterfall(rows=tuple(rows), marks=tuple(marks), height=len(rows) * ROW,
                     span=span)


@dataclass(frozen=True, slots=True)
class CostBar:
    start: float
    end: float
    cost: float
    calls: int
    unpriced: int
    x: float
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class CostPlot:
    bars: tuple[CostBar, ...]
    total: float
    peak: float
    start: float | None
    end: float | None
    unpriced: int
    height: float
    by: str = "cost"
    """What the bars' heights show: ``cost``, or ``calls`` when every call was free."""


def cost_plot(runs: list[tuple[RunRecord, list[Event]]], prices: PriceTable, *,
              buckets: int = 24, height: float = 160.0) -> CostPlot:
    """The model spend of ``runs`` over time, in ``buckets`` equal slices of the period
    their calls span (a call counts at its start; calls reused by a fork, not at all:
    nothing was spent). Calls to unpriced models are counted apart, never as zero."""
    points: list[tuple[float, float | None]] = []
    for rec, events in runs:
        for call in call_usages(events, prices):
            if call.reused or not call.made or call.kind != "model":
                continue
            at = call.started_at if call.started_at is not None else rec.created_at
            points.append((at, call.cost))
    if not points:
        return CostPlot(bars=(), total=0.0, peak=0.0, start=None, end=None, unpriced=0,
                        height=height)
    start = min(t for t, _ in points)
    end = max(t for t, _ in points)
    slice_ = max((end - start) / buckets, 1e-9)
    sums = [0.0] * buckets
    calls = [0] * buckets
    unpriced = [0] * buckets
    for t, cost in points:
        i = min(buckets - 1, math.floor((t - start) / slice_))
        calls[i] += 1
        if cost is None:
            unpriced[i] += 1
        else:
            sums[i] += cost
    peak = max(sums)
    by = "cost" if peak > 0 else "calls"
    scale = [s / peak for s in sums] if peak > 0 else [c / max(calls) for c in calls]
    bar_w = WIDTH / buckets
    bars = tuple(CostBar(start=start + i * slice_, end=start + (i + 1) * slice_,
                         cost=sums[i], calls=calls[i], unpriced=unpriced[i],
                         x=i * bar_w, width=max(1.0, bar_w - 2),
                         height=scale[i] * (height - 20 - PLOT_TOP))
                 for i in range(buckets))
    return CostPlot(bars=bars, total=sum(sums), peak=peak, start=start, end=end,
                    unpriced=sum(unpriced), height=height, by=by)


@dataclass(frozen=True, slots=True)
class Message:
    """One message of an agent's conversation, as its journal recorded it."""

    role: str
    """``assistant`` (a model turn) or ``tool`` (a tool call's result)."""
    step_id: str | None
    origin: str
    """Who said it: the ``provider:model`` that answered the turn (a fallback's, when the
    primary failed), or ``tool:name``."""
    content: str
    tool_calls: tuple[tuple[str, str], ...]
    """``(tool, arguments)`` the model asked for."""
    outcome: str
    failed: bool
    context: tuple[str, ...] = ()
    """For a model turn: where the messages it saw first came from (``user``,
    ``tool:search (untrusted)``), when the journal says (provenance)."""


@dataclass(frozen=True, slots=True)
class Conversation:
    agent: str
    messages: tuple[Message, ...]


def _answer(payload: str | None) -> dict[str, Any]:
    try:
        found = json.loads(payload or "null")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {"content": found}


def conversations(root: TraceNode, events: list[Event],
                  steps: list[Step]) -> list[Conversation]:
    """The agents' conversations in ``root`` (from ``build_trace``, which groups each
    agent's model turns with the tool calls they asked for): each turn's answer, the
    model that gave it and the origins of what it saw (``read_story``'s), each tool
    call's result, in journal order."""
    completed = {e.step_id: e.payload for e in events
                 if e.kind == EventKind.STEP_COMPLETED and e.step_id is not None}
    origins = {st.step_id: st.origins for st in steps}
    out: list[Conversation] = []
    for node, _ in _walk(root, 0):
        if node.kind != "agent":
            continue
        messages = []
        for leaf in node.children:
            payload = completed.get(leaf.step_id or "")
            failed = "failed" in leaf.outcome
            if leaf.kind == "model":
                d = _answer(payload)
                origin = (f"{d['provider']}:{d['model']}" if d.get("provider")
                          and d.get("model") else leaf.label.removeprefix("chat "))
                calls = tuple((str(c.get("name")), str(c.get("arguments", "")))
                              for c in d.get("tool_calls") or () if isinstance(c, dict))
                content = d.get("content")
                messages.append(Message(
                    role="assistant", step_id=leaf.step_id, origin=origin,
                    content="" if content is None else str(content), tool_calls=calls,
                    outcome=leaf.outcome, failed=failed,
                    context=origins.get(leaf.step_id or "", ())))
            elif leaf.kind == "tool":
                messages.append(Message(
                    role="tool", step_id=leaf.step_id,
                    origin=leaf.label.replace("execute_tool ", "tool:"),
                    content=payload or "", tool_calls=(), outcome=leaf.outcome,
                    failed=failed))
        out.append(Conversation(agent=node.label.removeprefix("invoke_agent "),
                                messages=tuple(messages)))
    return out

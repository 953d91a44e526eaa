"""``stalwart stats``: per model and per tool — calls, errors by kind, latency, tokens,
cost, semantic failures and breaker state — over the runs of a period, read from the
journal; then what the journal says about semantic coordination (re-asks, repairs,
extra critic rounds and trials per accepted answer, with their tokens; oscillating
plans; blackboard entries built on refuted ones: see ``patterns._semantic``).

Latency is per attempt, from the journal: ``call_timed`` gives the duration of a call's
last attempt, and every ``attempt_failed`` its own. Breaker state lives in the memory
of the processes that make the calls, so a CLI process cannot know it; what the journal
does show is a breaker *rejecting* a call (an attempt failed with ``CircuitOpenError``).
The column says ``open@TIME`` when the latest journaled attempt for a dependency was
such a rejection, and ``n/a`` otherwise.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.text import Text

from .._runtime import Runtime
from ..engine._cost import PriceTable, Tally, call_usages
from ..patterns._blackboard import poisoning
from ..patterns._semantic import SemanticReport, semantic_report
from ..store._base import Event, EventKind, RunRecord
from ..store._board import BoardStore
from ._common import (
    JsonOption,
    StoreOption,
    client_runtime,
    fmt_time,
    print_json,
    run_async,
)
from ._options import at_least
from ._output import Column, PlainOption, Rows, console, parse_duration, pipe_console
from ._trace import fmt_cost

__all__ = ["aggregate", "collect", "parse_duration", "percentile", "stats"]

def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile ``q`` (0-100) of ``values``; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class _Row:
    kind: str
    tally: Tally = field(default_factory=Tally)
    latencies: list[float] = field(default_factory=list)
    rejected_at: float | None = None
    last_attempt_at: float | None = None
    semantic: int = 0
    """Answers judged wrong after they returned (see ``patterns._semantic``)."""

    def as_json(self, key: str) -> dict[str, Any]:
        return {"key": key, "kind": self.kind, **self.tally.as_json(),
                "p50": percentile(self.latencies, 50), "p95": percentile(self.latencies, 95),
                "semantic": self.semantic, "breaker": self.breaker}

    @property
    def breaker(self) -> str:
        if self.rejected_at is not None and self.rejected_at == self.last_attempt_at:
            return f"open@{fmt_time(self.rejected_at)}"
        return "n/a"


def aggregate(runs: list[tuple[RunRecord, list[Event]]], prices: PriceTable,
              ) -> dict[str, _Row]:
    """Rows by dependency key over the given runs' journals."""
    rows: dict[str, _Row] = {}
    for _run, events in runs:
        for call in call_usages(events, prices):
            if call.reused:
                continue
            # Each dependency its own attempts: a primary that failed over to a
            # fallback has a row with its failures; the fallback, with its answer.
            for part in call.by_key():
                row = rows.setdefault(part.key, _Row(kind=part.kind))
                row.tally.add(part)
                row.latencies.extend(part.attempt_durations)
        for ev in events:
            if ev.kind not in (EventKind.ATTEMPT_FAILED, EventKind.CALL_TIMED):
                continue
            d = json.loads(ev.payload or "{}")
            seen = rows.get(str(d.get("key")))
            if seen is None:
                continue
            if seen.last_attempt_at is None or ev.created_at >= seen.last_attempt_at:
                seen.last_attempt_at = ev.created_at
            if ev.kind == EventKind.ATTEMPT_FAILED and str(
                    d.get("error", {}).get("type", "")).endswith("CircuitOpenError"):
                seen.rejected_at = max(seen.rejected_at or 0.0, ev.created_at)
    for key, n in semantic_report((r.run_id, evs) for r, evs in runs).failures.items():
        rows.setdefault(key, _Row(kind="member" if key.startswith("member:")
                                  else "model")).semantic += n
    return rows


async def collect(rt: Runtime, since: float | None,
                  limit: int) -> list[tuple[RunRecord, list[Event]]]:
    """The newest ``limit`` runs active in the last ``since`` seconds (all with
    ``None``), each with its journal."""
    records = await rt.list_runs(limit=limit)
    now = time.time()
    out = []
    for rec in records:
        if since is not None and rec.updated_at < now - since:
            continue
        out.append((rec, await rt.store.load_events(rec.run_id)))
    return out


async def _collect(rt: Runtime, since: float | None, limit: int
                   ) -> tuple[list[tuple[RunRecord, list[Event]]], dict[str, list[Any]]]:
    """The runs of the period with their journals, and each blackboard's entries built
    on a refuted one."""
    try:
        runs = await collect(rt, since, limit)
        poisoned: dict[str, list[Any]] = {}
        if isinstance(rt.store, BoardStore):
            for board in await rt.store.board_names():
                found = poisoning([e for e in await rt.store.board_entries(board)
                                   if not e.taken])
                if found:
                    poisoned[board] = found
        return runs, poisoned
    finally:
        await rt.close()


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.1f}s"


def stats(
    since: Annotated[str | None, typer.Option(
        "--since", metavar="DURATION",
        help="Only runs active in this period: 90s, 15m, 2h, 1d (a bare number is "
             "seconds).", show_default="all runs")] = None,
    limit: Annotated[int, typer.Option(
        metavar="N", callback=at_least(1),
        help="Look at most at this many runs, newest first.")] = 1000,
    as_json: JsonOption = False,
    plain: PlainOption = False,
    store: StoreOption = None,
) -> None:
    """Per model and tool: calls, errors by kind, p50/p95 latency, tokens, cost, breaker.

    Read from the journal of the runs active in the --since period (all runs without
    it)."""
    window = parse_duration(since) if since is not None else None
    rt = client_runtime(store)
    runs, poisoned = run_async(_collect(rt, window, limit))
    rows = aggregate(runs, rt.prices)
    ordered = sorted(rows.items(), key=lambda kv: (kv[1].kind != "model", kv[0]))
    report = semantic_report((r.run_id, evs) for r, evs in runs)
    if as_json:
        print_json({"runs": len(runs), "since": window,
                    "rows": [row.as_json(key) for key, row in ordered],
                    "semantic": report.as_json(),
                    "poisoned": {b: [{"key": p.key, "chain": list(p.chain),
                                      "refuted_by": p.refuted_by} for p in found]
                                 for b, found in poisoned.items()}})
        return
    out = console()
    # With --plain the table alone goes to stdout; what frames it, to stderr.
    notes = pipe_console(sys.stderr) if plain else out
    scope = f"in the last {since}" if since else "in the journal"
    notes.print(Text(f"{len(runs)} run(s) {scope}", style="bold"))
    if not rows and not plain:
        out.print("no model or tool calls")
        return
    table = Rows(["dependency", "calls", "failed", Column("errors", wrap=True), "p50",
                  "p95", "tokens", "cost", "semantic", "breaker"])
    for key, row in ordered:
        t = row.tally
        errors = ", ".join(f"{k} x{n}" for k, n in sorted(t.errors.items())) or "-"
        if t.refused:
            errors += f" ({t.refused} refused, not sent)"
        cost = fmt_cost(t.cost) if row.kind == "model" else "-"
        if t.cost is None and t.priced_cost:
            cost = f">= {fmt_cost(t.priced_cost)} ({t.unpriced_calls} unpriced)"
        table.add(key, str(t.calls), str(t.failed), Text(errors), _ms(percentile(
            row.latencies, 50)), _ms(percentile(row.latencies, 95)),
            str(t.tokens) if row.kind == "model" else "-", cost, str(row.semantic),
            row.breaker)
    table.print(out, plain=plain)
    notes.print(Text("calls: a retried call counts once; errors: one per failed attempt. "
                   "semantic: answers judged wrong after they returned (dissent, rejected "
                   "drafts, failed trials, refuted entries, re-asked answers). "
                   "breaker: open@TIME when the latest journaled attempt was rejected by an "
                   "open breaker; live breaker state is held by the worker processes, not "
                   "the journal (n/a)", style="dim"))
    for line in semantic_lines(report, poisoned):
        notes.print(line)


def semantic_lines(report: SemanticReport, poisoned: dict[str, list[Any]]) -> list[str]:
    """The semantic coordination summary under the table (empty when there is none)."""
    out = []
    if report.retries or report.accepted:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(report.retries.items())) or "none"
        amp = report.amplification
        out.append(f"semantic retries: {kinds}; {report.retry_tokens} tokens; "
                   f"{report.accepted} accepted answer(s); "
                   + (f"{amp:.2f} retries per accepted answer" if amp is not None
                      else "no accepted answer")
                   + (f"; {report.runs_over_budget} run(s) stopped by the semantic retry "
                      "budget" if report.runs_over_budget else ""))
    for run_id, where, osc in report.oscillations:
        out.append(f"oscillation: run {run_id}, {where}: "
                   f"{' -> '.join(osc.cycle)} x{osc.repeats}")
    for board, found in poisoned.items():
        for p in found:
            out.append(f"poisoned: blackboard {board!r}, {p.key} built on refuted "
                       f"{p.chain[-1]} ({' -> '.join(p.chain)})")
    return out

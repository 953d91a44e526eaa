"""``stalwart board NAME``: a blackboard's entries with their provenance and verification,
and what was built on a refuted entry (context poisoning), read from the store."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.text import Text

from ..errors import BoardPatternError
from ..patterns._blackboard import poisoning
from ..store._board import BoardEntry, BoardStore, matches, parse_pattern
from ._common import (
    CliError,
    JsonOption,
    StoreOption,
    client_runtime,
    fmt_time,
    print_json,
    run_async,
)
from ._output import PlainOption, Rows, console, pipe_console

__all__ = ["board"]

_STYLE = {"verified": "green", "refuted": "red", "unverified": "yellow"}


async def _entries(store: str | None, name: str) -> tuple[list[BoardEntry], list[str]]:
    rt = client_runtime(store)
    try:
        await rt.open()
        s = rt.store
        if not isinstance(s, BoardStore):
            raise CliError(f"the store {s.url} keeps no blackboards")
        return await s.board_entries(name), await s.board_names()
    finally:
        await rt.close()


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def board(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The blackboard's name.")],
    pattern: Annotated[str, typer.Option(
        "--pattern", "-p", metavar="GLOB",
        help="Only keys matching this glob (* any characters, ? one, \\ escapes).")] = "*",
    verified_only: Annotated[bool, typer.Option(
        "--verified-only", help="Only verified entries.")] = False,
    taken: Annotated[bool, typer.Option(
        "--taken", help="Also entries already taken.")] = False,
    as_json: JsonOption = False,
    plain: PlainOption = False,
    store: StoreOption = None,
) -> None:
    """A blackboard's entries: version, verification (by whom), value, who wrote it
    (agent, model, run and step) and whether it was built on a refuted entry."""
    try:
        pat = parse_pattern(name, pattern, verified_only=verified_only)
    except BoardPatternError as exc:
        raise CliError(str(exc)) from None
    everything, boards = run_async(_entries(store, name))
    poisoned = {p.key: p for p in poisoning([e for e in everything if not e.taken])}
    shown = [e for e in everything if (matches(pat, e) or (taken and e.taken and matches(
        pat, _untaken(e))))]
    if as_json:
        print_json({"board": name, "entries": [
            {**e.as_json(), "poisoned_by": list(poisoned[e.key].chain)
             if e.key in poisoned else None} for e in shown]})
        return
    out = console()
    notes = pipe_console(sys.stderr) if plain else out
    if not everything:
        known = ", ".join(boards) or "none"
        notes.print(f"no entries on blackboard {name!r} (boards in this store: {known})")
        return
    table = Rows(["key", "v", "state", "value", "by", "written", "taken", "poisoned"])
    for e in shown:
        prov = e.provenance
        who = " ".join(str(x) for x in (prov.get("agent"), prov.get("model")) if x) or "-"
        where = f"{prov.get('run_id', '?')}/{prov.get('step_id', '?')}"
        state = e.state + (f" by {e.verified_by}" if e.verified_by else "")
        chain = poisoned.get(e.key)
        table.add(e.key, str(e.version), Text(state, style=_STYLE[e.state]),
                  _short(e.value), who, f"{where} {fmt_time(e.updated_at)}",
                  e.taken_by or "-", " -> ".join(chain.chain) if chain else "-")
    table.print(out, plain=plain)
    notes.print(Text(f"{len(shown)} of {len(everything)} entr"
                     f"{'y' if len(everything) == 1 else 'ies'} on {name!r}; "
                     f"{len(poisoned)} built on a refuted entry", style="dim"))


def _untaken(e: BoardEntry) -> BoardEntry:
    return BoardEntry.from_json({**e.as_json(), "taken_by": None, "taken_at": None})

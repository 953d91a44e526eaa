"""Output that survives a pipe: consoles, tables, TSV and durations for every command.

On a terminal, tables are rich tables fitted to the window (a long last column is cut
with an ellipsis). When stdout is not a terminal (``| head``, ``| cat``, a file), the
same tables are printed at their full width: no column is cut or wrapped, and no line
ends in the spaces rich pads cells with. ``--plain`` prints a table as TSV (a header
row, then one row per line, tabs and newlines inside a cell turned into spaces, values
in full) for ``cut`` and ``awk``; ``--json`` stays the complete, structured form.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, TextIO, cast

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._common import USAGE, CliError

__all__ = [
    "PIPE_WIDTH",
    "Column",
    "PlainOption",
    "Rows",
    "cell",
    "parse_duration",
    "pipe_console",
]

PIPE_WIDTH = 1_000_000
"""The width a console gets when stdout is not a terminal: wide enough that nothing is
ever cut or wrapped."""

PlainOption = Annotated[bool, typer.Option(
    "--plain", help="Print tab-separated values (a header row, then one row per line), "
                    "values in full.")]


class _Unpadded(io.TextIOBase):
    """Writes through to ``stream`` with the spaces at the end of each line removed
    (rich pads every cell of a table to its column's width, the last one too)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._pending = ""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        if lines:
            self._stream.write("".join(line.rstrip(" ") + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._stream.write(self._pending.rstrip(" "))
            self._pending = ""
        self._stream.flush()


def pipe_console(stream: TextIO) -> Console:
    """A console for ``stream``: fitted to the window on a terminal; full width, never
    wrapped and without trailing spaces otherwise."""
    if stream.isatty():
        return Console(file=stream, highlight=False, soft_wrap=False)
    return Console(file=cast(TextIO, _Unpadded(stream)), width=PIPE_WIDTH, highlight=False,
                   soft_wrap=True, color_system=None)


def console() -> Console:
    """A console on the current stdout: fitted to a terminal; when stdout is not one,
    full width, never wrapped, without trailing spaces."""
    return pipe_console(sys.stdout)


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its header, and whether a terminal may cut it (the last, long
    one) or must keep it on one line."""

    header: str
    cut: bool = False
    wrap: bool = False


@dataclass(slots=True)
class Rows:
    """A table built once and printed as a rich table or as TSV."""

    columns: Sequence[Column | str]
    rows: list[list[str | Text]] = field(default_factory=list)

    def add(self, *cells: str | Text) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    def print(self, out: Console, *, plain: bool = False) -> None:
        cols = [c if isinstance(c, Column) else Column(c) for c in self.columns]
        if plain:
            lines = ["\t".join(_tsv(c.header) for c in cols)]
            lines += ["\t".join(_tsv(_text(v)) for v in row) for row in self.rows]
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()
            return
        table = Table(box=None, pad_edge=False)
        for c in cols:
            table.add_column(c.header, no_wrap=not c.wrap,
                             overflow="ellipsis" if c.cut else "fold")
        for row in self.rows:
            table.add_row(*row)
        out.print(table)


def cell(text: str | None, limit: int, *, plain: bool) -> str:
    """A long value on one line: shortened to ``limit`` with ``...`` in a table, whole
    in TSV."""
    if text is None:
        return ""
    one = " ".join(text.split())
    if plain or len(one) <= limit:
        return one
    return one[: limit - 3] + "..."


def _text(value: str | Text) -> str:
    return value.plain if isinstance(value, Text) else value


def _tsv(value: str) -> str:
    return value.replace("\t", " ").replace("\r", " ").replace("\n", " ")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str, option: str = "--since") -> float:
    """``90s``, ``15m``, ``2h``, ``1d``, ``1w`` (a bare number is seconds) as seconds.

    Raises:
        CliError: anything else (exit 2).
    """
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*", text)
    if m is None:
        raise CliError(f"{option} {text!r} is not a duration like 90s, 15m, 2h or 1d "
                       "(a bare number is seconds)", USAGE)
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]

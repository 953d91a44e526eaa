"""The user's own frames of a journaled traceback.

The journal keeps an error's traceback as the text Python printed (never as an object:
the journal is data). A failed run's traceback is mostly stalwart's engine and asyncio;
what its author needs first is where *their* code was: the frames whose file is neither
stalwart's nor the standard library's nor an installed package's. ``run`` and
``runs show`` print those, ``--traceback`` the whole text.
"""

from __future__ import annotations

import re
import sysconfig
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["Frame", "TracebackOption", "traceback_lines", "user_frames"]

TracebackOption = Annotated[bool, typer.Option(
    "--traceback", help="Print a failed run's whole journaled traceback, not only the "
                        "frames of your code.")]

_FILE = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$')


@dataclass(frozen=True, slots=True)
class Frame:
    path: str
    line: int
    function: str
    source: str
    """The source line as the traceback shows it (empty when it did not)."""

    def where(self, base: Path | None = None) -> str:
        """``path:line in function``, the path relative to ``base`` when inside it."""
        path = self.path
        if base is not None:
            try:
                path = str(Path(path).resolve().relative_to(base.resolve()))
            except (ValueError, OSError):
                pass
        return f"{path}:{self.line} in {self.function}"


@cache
def _not_users() -> tuple[str, ...]:
    """Folders whose files are not the user's: stalwart, the standard library, and
    installed packages."""
    roots = {str(Path(__file__).resolve().parents[1])}  # the stalwart package
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            roots.add(str(Path(paths[key]).resolve()))
    return tuple(sorted(roots))


def _is_users(path: str) -> bool:
    if path.startswith("<"):  # <frozen ...>, <string>
        return False
    try:
        resolved = str(Path(path).resolve())
    except OSError:
        return True
    return not any(resolved == root or resolved.startswith(root + "/")
                   for root in _not_users())


def user_frames(traceback_text: str) -> list[Frame]:
    """The frames of ``traceback_text`` in the user's code, innermost last (as Python
    prints them), each once even when the traceback's chained sections repeat it."""
    lines = traceback_text.splitlines()
    out: list[Frame] = []
    for i, text in enumerate(lines):
        m = _FILE.match(text)
        if m is None or not _is_users(m["path"]):
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        source = nxt.strip() if nxt.startswith("    ") and not _FILE.match(nxt) else ""
        frame = Frame(m["path"], int(m["line"]), m["func"].strip(), source)
        if frame in out:
            out.remove(frame)
        out.append(frame)
    return out


def traceback_lines(traceback_text: str, *, whole: bool, base: Path | None = None,
                    ) -> list[str]:
    """What to print under a run's error: its user frames (``where`` and source, two
    lines each), or with ``whole`` the journaled traceback as it is; nothing when the
    journal holds none."""
    if not traceback_text.strip():
        return []
    if whole:
        return traceback_text.rstrip("\n").splitlines()
    frames = user_frames(traceback_text)
    out = []
    for frame in frames:
        out.append(f"  {frame.where(base)}")
        if frame.source:
            out.append(f"    {frame.source}")
    return out

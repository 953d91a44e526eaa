"""A failed run shows where the user's code was: its frames from the journaled traceback.

``run`` prints them on stderr before its one error line, ``runs show`` under the error;
``--traceback`` prints the whole journaled traceback instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stalwart.cli._frames import Frame, traceback_lines, user_frames

MODULE = '''
import stalwart as sw

app = sw.Runtime()


def lookup(topic: str) -> str:
    return fetch_page(topic)  # a NameError: fetch_page is not defined


@app.workflow
async def research(ctx: sw.Context, topic: str) -> str:
    page = await ctx.step(lookup, topic)
    return page.upper()
'''


def test_only_frames_outside_stalwart_the_stdlib_and_packages_are_the_users() -> None:
    """From a traceback through asyncio, stalwart and the user's files, the user's
    frames remain, innermost last, each with its source line, each once."""
    import asyncio

    import stalwart

    engine = str(Path(stalwart.__file__).parent / "_execution.py")
    loop = str(Path(asyncio.__file__).parent / "events.py")
    text = f'''Traceback (most recent call last):
  File "{loop}", line 80, in _run
    self._context.run(self._callback, *self._args)
  File "/home/me/app.py", line 12, in research
    page = await ctx.step(lookup, topic)
  File "{engine}", line 400, in invoke
    return await fn(*args, **kwargs)
  File "/home/me/app.py", line 7, in lookup
    return fetch_page(topic)
           ^^^^^^^^^^
  File "<frozen importlib._bootstrap>", line 1, in x
NameError: name 'fetch_page' is not defined
'''
    assert user_frames(text) == [
        Frame("/home/me/app.py", 12, "research", "page = await ctx.step(lookup, topic)"),
        Frame("/home/me/app.py", 7, "lookup", "return fetch_page(topic)")]
    assert traceback_lines(text, whole=False, base=Path("/home/me")) == [
        "  app.py:12 in research", "    page = await ctx.step(lookup, topic)",
        "  app.py:7 in lookup", "    return fetch_page(topic)"]
    assert traceback_lines(text, whole=True) == text.rstrip("\n").splitlines()
    assert traceback_lines("", whole=False) == []


def _stalwart(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    return subprocess.run([sys.executable, "-m", "stalwart.cli", *args], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)


@pytest.mark.slow
def test_a_failed_run_names_the_users_lines_and_traceback_prints_the_whole(
        tmp_path: Path) -> None:
    """``run``: the frames (file:line in function, source) then the one error line;
    ``runs show`` the same under the error; ``--traceback`` the journaled text."""
    (tmp_path / "broken.py").write_text(MODULE)
    done = _stalwart(tmp_path, "run", "broken:research", "-i", '"gpu"', "--run-id", "b1")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    end = lines.index("  broken.py:13 in research")
    assert lines[end:end + 4] == [
        "  broken.py:13 in research", "    page = await ctx.step(lookup, topic)",
        "  broken.py:8 in lookup",
        "    return fetch_page(topic)  # a NameError: fetch_page is not defined"]
    assert lines[end + 4].startswith("error: run b1 failed: builtins.NameError: name "
                                     "'fetch_page' is not defined")
    assert lines[end + 4].endswith("; the whole traceback: --traceback)")
    assert len(lines) == end + 5
    assert "Traceback (most recent call last)" not in done.stderr

    shown = _stalwart(tmp_path, "runs", "show", "b1").stdout
    assert "  broken.py:8 in lookup" in shown and "stalwart runs show b1 --traceback" in shown
    whole = _stalwart(tmp_path, "runs", "show", "b1", "--traceback").stdout
    assert "Traceback (most recent call last)" in whole
    assert "_execution.py" in whole  # stalwart's own frames too

    again = _stalwart(tmp_path, "run", "broken:research", "-i", '"gpu"', "--traceback")
    assert "Traceback (most recent call last)" in again.stderr
    assert again.stderr.splitlines()[-1].startswith("error: run ")

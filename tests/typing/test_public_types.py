"""The public surface is typed: mypy (strict, unused ignores reported) checks
``typed_app.py``, a user's program whose ``assert_type`` lines must hold and whose
``# type: ignore[code]`` lines are deliberate errors mypy must still report."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

HERE = Path(__file__).parent
FLAGS = ["--strict", "--warn-unused-ignores", "--no-error-summary", "--show-error-codes"]


def mypy(path: Path) -> tuple[str, int]:
    out, err, status = mypy_api.run([*FLAGS, str(path)])
    return out + err, status


def test_the_typed_program_checks_and_its_deliberate_errors_are_reported() -> None:
    """`@app.workflow` gives Workflow[P, R]; start/run/result carry them; ctx.step,
    ctx.child, ctx.start_child, ctx.gather and ctx.llm are typed; each wrong call marked
    in the program is an error mypy reports (an ignore it no longer needs fails)."""
    out, status = mypy(HERE / "typed_app.py")
    assert status == 0, out


def test_a_wrong_call_without_its_ignore_is_reported(tmp_path: Path) -> None:
    """The check can fail: the same program with one deliberate error left unmarked is
    refused, at that line, for the workflow's argument type."""
    source = (HERE / "typed_app.py").read_text()
    marked = 'await app.start(research, 42)  # type: ignore[call-overload]'
    assert marked in source
    probe = tmp_path / "typed_app.py"
    probe.write_text(source.replace(marked, "await app.start(research, 42)"))
    out, status = mypy(probe)
    line = source[:source.index(marked)].count("\n") + 1
    assert status == 1
    assert f"typed_app.py:{line}: error: No overload variant of \"start\"" in out

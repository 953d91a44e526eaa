"""Functions of the engine stay small enough to read whole: none over 60 lines (the
engine's modules, the context, the runtime and agents), measured with ``ast`` from the
``def`` line to the last line of the body, docstring included."""

from __future__ import annotations

import ast
from pathlib import Path

import stalwart

SRC = Path(stalwart.__file__).parent
LIMIT = 60
FILES = [*sorted((SRC / "engine").glob("*.py")),
         SRC / "_context.py", SRC / "_runtime.py", SRC / "_agent.py"]
EXCEPTIONS: dict[str, str] = {}
"""``file:function`` over the limit, each with why it is better whole (none today)."""


def long_functions(path: Path, limit: int = LIMIT) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    return [(f"{path.name}:{node.name}", node.end_lineno - node.lineno + 1)
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno is not None and node.end_lineno - node.lineno + 1 > limit]


def test_no_engine_function_is_over_the_limit() -> None:
    """Every function of the engine fits in 60 lines, but the listed exceptions."""
    found = [(name, n) for path in FILES for name, n in long_functions(path)
             if name not in EXCEPTIONS]
    assert found == []


def test_the_measure_counts_a_long_function(tmp_path: Path) -> None:
    """The checker itself: a 62-line function is reported, with its length."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n" + "    x = 1\n" * 61)
    assert long_functions(probe) == [("probe.py:f", 62)]

"""Nothing in stalwart can unpickle what it reads: no module imports a code-running
deserializer (pickle, marshal, shelve, dill...), by statement or by name. Every package
is checked, the ones that read the journal (the engine, the stores, the CLI) and the rest.
"""

from __future__ import annotations

import ast
from pathlib import Path

import stalwart

SRC = Path(stalwart.__file__).parent
FORBIDDEN = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve",
             "jsonpickle", "joblib", "copyreg"}


def _checked_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _offences(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module.split(".")[0] in FORBIDDEN:
                found.append(node.module)
        elif isinstance(node, ast.Call) and node.args:
            # __import__("pickle"), importlib.import_module("pickle")
            first = node.args[0]
            if (isinstance(first, ast.Constant) and isinstance(first.value, str)
                    and first.value.split(".")[0] in FORBIDDEN):
                found.append(f"{ast.unparse(node.func)}({first.value!r})")
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in FORBIDDEN):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_module_can_unpickle() -> None:
    """An AST walk of src/stalwart finds no deserializer that runs code."""
    files = _checked_files()
    assert len(files) > 50  # the walk sees the package
    offences = {str(p.relative_to(SRC)): found for p in files
                if (found := _offences(ast.parse(p.read_text(), str(p))))}
    assert offences == {}


def test_the_walk_catches_each_way_of_reaching_pickle() -> None:
    """The checker itself: each spelling below is caught."""
    for source in ("import pickle", "import marshal as m", "from pickle import loads",
                   "from dill import loads", "__import__('pickle')",
                   "importlib.import_module('shelve')", "x = pickle.loads(b'')"):
        assert _offences(ast.parse(source)), source
    assert _offences(ast.parse("import json\njson.loads('1')")) == []

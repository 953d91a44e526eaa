"""The policies' and the stores' import arrows, read from the source with ``ast``.

``policies/`` import only the foundation (clock, errors, the shared bucket words) and
each other; cluster-wide limits reach a store only through the ``LimitStore`` protocol
the policies define. ``store/`` imports nothing of the policies.
"""

from __future__ import annotations

import ast
from pathlib import Path

import stalwart

SRC = Path(stalwart.__file__).parent
FOUNDATION = {"stalwart._clock", "stalwart.errors", "stalwart._buckets"}


def imports_of(path: Path, package: str) -> set[str]:
    """The stalwart modules ``path`` imports, absolute, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("stalwart")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.startswith("stalwart"):
                found.add(name)
    return found


def test_policies_import_only_the_foundation_and_each_other() -> None:
    """No arrow from policies/ to the engine, the stores, models or telemetry."""
    bad = {}
    for path in sorted((SRC / "policies").glob("*.py")):
        wrong = {m for m in imports_of(path, "stalwart.policies")
                 if m not in FOUNDATION and not m.startswith("stalwart.policies")}
        if wrong:
            bad[path.name] = sorted(wrong)
    assert bad == {}


def test_the_stores_import_nothing_of_the_policies() -> None:
    """store/ implements LimitStore without importing it (or any policy)."""
    bad = {}
    for path in sorted((SRC / "store").glob("*.py")):
        wrong = {m for m in imports_of(path, "stalwart.store")
                 if m.startswith("stalwart.policies")}
        if wrong:
            bad[path.name] = sorted(wrong)
    assert bad == {}


def test_the_walker_sees_relative_and_nested_imports(tmp_path: Path) -> None:
    """The checker itself: a relative import two levels up, inside a function, is seen."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..store._limits import plan_reservation\n")
    assert imports_of(probe, "stalwart.policies") == {"stalwart.store._limits"}

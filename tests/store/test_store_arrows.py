"""The stores' import arrows, read from the source with ``ast`` (docs/design.md).

``store/`` depends on the foundation only; the run planner (``_runs``) is pure: it
imports no driver and no I/O, only the store's records and checksums.
"""

from __future__ import annotations

import ast
from pathlib import Path

import stalwart

SRC = Path(stalwart.__file__).parent
FOUNDATION = {"stalwart.errors", "stalwart._buckets"}


def imports_of(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports, absolute, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join([*base, node.module] if node.module else base))
            else:
                found.add(node.module or "")
    return found


def test_the_stores_import_only_the_foundation() -> None:
    """No arrow from store/ to the engine, policies, models, telemetry or testing."""
    bad = {}
    for path in sorted((SRC / "store").glob("*.py")):
        wrong = {m for m in imports_of(path, "stalwart.store") if m.startswith("stalwart")
                 and m not in FOUNDATION and not m.startswith("stalwart.store")}
        if wrong:
            bad[path.name] = sorted(wrong)
    assert bad == {}


def test_the_run_planner_is_pure() -> None:
    """_runs imports the store's records, checksums and errors, and nothing that does
    I/O or keeps time."""
    found = imports_of(SRC / "store" / "_runs.py", "stalwart.store")
    assert {m for m in found if m.startswith("stalwart")} <= {
        "stalwart.errors", "stalwart.store._base", "stalwart.store._chain"}
    assert not found & {"sqlite3", "psycopg", "asyncio", "threading", "time", "random",
                        "os", "socket"}


def test_the_sqlite_store_needs_no_postgres_extra() -> None:
    """_sqlite and the modules beside it (_sqlite_ops, _sqlite_rows, _sqlite_schema)
    import neither psycopg nor a PostgreSQL module: the default store works without the
    postgres extra."""
    bad = {}
    for path in sorted((SRC / "store").glob("_sqlite*.py")):
        wrong = {m for m in imports_of(path, "stalwart.store")
                 if m.split(".")[0] in ("psycopg", "psycopg_pool")
                 or m.startswith(("stalwart.store._postgres", "stalwart.store._pg_"))}
        if wrong:
            bad[path.name] = sorted(wrong)
    assert len(list((SRC / "store").glob("_sqlite*.py"))) >= 4
    assert bad == {}


def test_the_walker_sees_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a relative import one level up, inside a function, is seen."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..policies import Retry\n")
    assert imports_of(probe, "stalwart.store") == {"stalwart.policies"}

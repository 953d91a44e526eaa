"""The package's import arrows, read from the source with ``ast``: the drawing in
docs/design.md ("The parts and their arrows") cannot rot.

Every import of a stalwart module counts, wherever it stands: at the top of a file,
inside a function, under ``if TYPE_CHECKING:``. Each module belongs to one part; a part
may import only the parts the design allows, the engine's modules only those before them
in its order, and the whole graph has no cycle. A function-local import of a stalwart
module is allowed only where :data:`LOCAL_IMPORTS` names it and says why (an optional
extra loaded on first use), never to dodge a cycle.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import stalwart

SRC = Path(stalwart.__file__).parent

FOUNDATION = {"stalwart.errors", "stalwart._clock", "stalwart._error_record",
              "stalwart._serde", "stalwart._buckets"}

PART_OF_MODULE = {
    "stalwart._context": "context",
    "stalwart._agent": "agents",
    "stalwart._runtime": "runtime",
    "stalwart._schedule": "runtime",
    "stalwart": "api",
    "stalwart._demo": "cli",
    "stalwart.__main__": "cli",
}
PART_OF_PACKAGE = {
    "stalwart.models": "models",
    "stalwart.policies": "policies",
    "stalwart.store": "store",
    "stalwart.engine": "engine",
    "stalwart.patterns": "patterns",
    "stalwart.memory": "memory",
    "stalwart.telemetry": "telemetry",
    "stalwart.cli": "cli",
    "stalwart.testing": "testing",
    "stalwart.tools": "tools",
    "stalwart.remote": "remote",
}

ALLOWED: dict[str, set[str]] = {
    "foundation": {"foundation"},
    "models": {"foundation"},
    "policies": {"foundation"},
    "store": {"foundation"},
    "engine": {"foundation", "models", "policies", "store"},
    "context": {"foundation", "models", "policies", "store", "engine"},
    "memory": {"foundation", "models", "policies", "store", "engine", "context"},
    "agents": {"foundation", "models", "policies", "store", "engine", "context", "memory"},
    "patterns": {"foundation", "models", "policies", "store", "engine", "context", "agents",
                 "memory"},
    "runtime": {"foundation", "models", "policies", "store", "engine", "context"},
    "api": {"foundation", "models", "policies", "store", "engine", "context", "agents",
            "patterns", "runtime", "tools", "remote", "memory"},
    # tools and agents from elsewhere (MCP, A2A) and the registry: over the engine's
    # tools, the context (remote agents as steps) and the runtime (a workflow served)
    "remote": {"foundation", "models", "policies", "store", "engine", "context", "agents",
               "runtime", "memory"},
    "tools": {"foundation"},  # helpers for tool bodies: what they refuse is an error
    "telemetry": {"foundation"},  # and the engine's interceptor protocol: TELEMETRY_SEES
    "cli": {"foundation", "models", "policies", "store", "engine", "context", "agents",
            "patterns", "runtime", "api", "telemetry", "cli", "remote", "memory"},
    "testing": {"foundation", "models", "policies", "store", "engine", "context", "agents",
                "patterns", "runtime", "api", "telemetry", "cli", "remote", "memory"},
}
"""Who may import whom (besides itself): the table of docs/design.md."""

TELEMETRY_SEES = {"stalwart.engine._interceptor"}
"""The one module of the engine telemetry imports: the hooks, their inputs, the
``Instrumentation`` protocol it implements."""

ENGINE_ORDER = [
    "_interceptor", "_store_retry", "_policy", "_schema", "_tools", "_privilege", "_cost",
    "_budget",
    "_determinism",
    "_outage", "_workflow", "_scope", "_engine", "_execution", "_steps", "_health", "_cancel",
    "_calls", "_llm", "_children", "_actor", "_gather", "_supervisor", "_saga", "_approval",
    "_stream",
    "_timetravel", "_worker",
]
"""The engine's modules, bottom first: each imports only modules before it."""

LOCAL_IMPORTS = {
    ("stalwart", "stalwart.models"): "the provider adapters load on first use (openai and "
                                     "anthropic cost ~1 s to import)",
    ("stalwart", "stalwart.store._postgres"): "the postgres extra (psycopg)",
    ("stalwart.engine._engine", "stalwart.store._postgres"): "the postgres extra (psycopg)",
    ("stalwart.cli._workers", "stalwart.store._postgres"): "the postgres extra (psycopg)",
    ("stalwart.telemetry", "stalwart.telemetry._setup"): "the otel extra",
    ("stalwart.telemetry._config", "stalwart.telemetry._otel"): "the otel extra",
    ("stalwart.testing", "stalwart.testing._otlp_receiver"): "the otel extra (its proto)",
    ("stalwart.models", "stalwart.models._openai"): "the openai client, on first use",
    ("stalwart.models", "stalwart.models._anthropic"): "the anthropic client, on first use",
    ("stalwart.models._base", "stalwart.models._openai"): "the openai client, on first use",
    ("stalwart.models._base", "stalwart.models._anthropic"): "the anthropic client, on "
                                                             "first use",
    ("stalwart.cli.dashboard._command", "stalwart.cli.dashboard._web"): "the dashboard extra "
                                                                       "(starlette, jinja2)",
}
"""Function-local imports of stalwart modules, each with its reason."""


@dataclass(frozen=True)
class Arrow:
    source: str
    target: str
    line: int
    local: bool
    """Inside a function (not at module level)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _resolve(source: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def arrows_of(path: Path, source: str, known: set[str]) -> Iterator[Arrow]:
    """The stalwart modules ``path`` imports, absolute, at any depth of the file: for
    ``from X import y`` the module ``X.y`` when it is one, else ``X``."""
    tree = ast.parse(path.read_text(), str(path))
    local: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            local.update(id(n) for n in ast.walk(node) if n is not node)
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(source, is_package, node)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        for target in targets:
            if target == "stalwart" or target.startswith("stalwart."):
                yield Arrow(source, target, node.lineno, id(node) in local)


def all_arrows() -> list[Arrow]:
    found = modules()
    known = set(found)
    return [a for name, path in found.items() for a in arrows_of(path, name, known)]


def part(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    if module in PART_OF_MODULE:
        return PART_OF_MODULE[module]
    for package, name in PART_OF_PACKAGE.items():
        if module == package or module.startswith(package + "."):
            return name
    raise AssertionError(f"{module} belongs to no part of the drawing: add it")


def forbidden(arrow: Arrow) -> str | None:
    """Why ``arrow`` breaks the drawing (``None``: it does not)."""
    src, dst = part(arrow.source), part(arrow.target)
    if src == dst and src != "engine":
        return None
    if src == "engine" and dst == "engine":
        a, b = (m.rpartition(".")[2] for m in (arrow.source, arrow.target))
        if arrow.target == "stalwart.engine" or ENGINE_ORDER.index(b) < ENGINE_ORDER.index(a):
            return None
        return f"engine: {a} comes before {b} in the engine's order"
    if src == "telemetry" and arrow.target in TELEMETRY_SEES:
        return None
    if dst not in ALLOWED[src]:
        return f"{src} -> {dst}"
    return None


def test_every_module_is_in_the_drawing() -> None:
    """Each module of the package belongs to a part (a new one must be placed), and the
    engine's order lists exactly the engine's modules."""
    for name in modules():
        part(name)
    engine = {n.rpartition(".")[2] for n in modules() if n.startswith("stalwart.engine.")}
    assert engine == set(ENGINE_ORDER)


def test_no_import_breaks_the_drawing() -> None:
    """No import (top-level, local or type-only) goes where docs/design.md forbids."""
    bad = [f"{a.source}:{a.line} imports {a.target} ({why})"
           for a in all_arrows() if (why := forbidden(a)) is not None]
    assert bad == []


def test_the_import_graph_has_no_cycle() -> None:
    """Module by module (type-only and local imports included), the arrows form a DAG."""
    graph: dict[str, set[str]] = {}
    for a in all_arrows():
        if a.target != a.source:
            graph.setdefault(a.source, set()).add(a.target)
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            # A module's package is imported before it (Python does); not an arrow back.
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            cycle = visit(node)
            assert cycle is None, " -> ".join(cycle)


def test_local_imports_are_the_listed_ones() -> None:
    """A function-local import of a stalwart module is one of LOCAL_IMPORTS (an optional
    extra or a slow import on first use), never a way around a cycle."""
    found = {(a.source, a.target) for a in all_arrows() if a.local}
    assert found == set(LOCAL_IMPORTS)


def test_nothing_in_the_package_imports_testing() -> None:
    """Production code never imports stalwart.testing (the fakes import production)."""
    bad = [f"{a.source}:{a.line}" for a in all_arrows()
           if a.target.startswith("stalwart.testing")
           and not a.source.startswith("stalwart.testing")]
    assert bad == []


@pytest.mark.parametrize(("code", "source", "expected"), [
    ("def f():\n    from ..store._limits import plan\n", "stalwart.policies._x",
     {("stalwart.store._limits", True)}),
    ("if TYPE_CHECKING:\n    from .._context import Context\n", "stalwart.engine._x",
     {("stalwart._context", False)}),
    ("from . import errors\n", "stalwart._x", {("stalwart.errors", False)}),
    ("import stalwart.engine._steps as s\n", "stalwart._x", {("stalwart.engine._steps", False)}),
])
def test_the_walker_sees_every_kind_of_import(tmp_path: Path, code: str, source: str,
                                              expected: set[tuple[str, bool]]) -> None:
    """The checker itself: relative, local, type-only and plain imports are all seen."""
    probe = tmp_path / "probe.py"
    probe.write_text(code)
    got = {(a.target, a.local) for a in arrows_of(probe, source, set(modules()))}
    assert got == expected


def test_the_rules_catch_what_they_name() -> None:
    """The checker itself: an engine module importing the context, the engine importing
    a later engine module, the store importing a policy, telemetry reading the engine's
    execution: each is reported."""
    cases = [("stalwart.engine._steps", "stalwart._context"),
             ("stalwart.engine._execution", "stalwart.engine._steps"),
             ("stalwart.store._sqlite", "stalwart.policies._limitstore"),
             ("stalwart.telemetry._otel", "stalwart.engine._execution"),
             ("stalwart.policies._retry", "stalwart.engine._policy"),
             ("stalwart._context", "stalwart.patterns._graph")]
    assert all(forbidden(Arrow(s, t, 1, False)) for s, t in cases)
    assert forbidden(Arrow("stalwart.engine._steps", "stalwart.engine._execution", 1,
                           False)) is None


def private_reads(path: Path) -> list[str]:
    """``obj._x`` reads of another object's private attribute in ``path`` (``self._x``
    and ``cls._x`` are the object's own)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_agents_patterns_and_the_engine_read_no_private_attribute() -> None:
    """Agents, patterns, the context, the runtime and the engine use each other through
    deliberate APIs (``ctx.execution`` and the engine's step functions), never another
    object's ``_x`` (agents read ``ctx._ex`` seven times once)."""
    files = [SRC / "_agent.py", SRC / "_context.py", SRC / "_runtime.py",
             *sorted((SRC / "engine").glob("*.py")), *sorted((SRC / "patterns").glob("*.py"))]
    assert [r for path in files for r in private_reads(path)] == []


def test_the_private_read_check_sees_one(tmp_path: Path) -> None:
    """The checker itself: ``ctx._ex`` is reported, ``self._ex`` is not."""
    probe = tmp_path / "probe.py"
    probe.write_text("ctx._ex.runtime\nself._ex\n")
    assert private_reads(probe) == ["probe.py:1 ctx._ex"]


def private_imports(path: Path) -> list[str]:
    """Imports in ``path`` of another package's private module or name (``a._b``,
    ``from a import _b``): what a library may change without notice."""
    def private(names: list[str]) -> bool:
        return any(n.startswith("_") and not n.startswith("__") for n in names)

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and not node.level:
            module = node.module or ""
            if module != "stalwart" and not module.startswith("stalwart.") and (
                    private(module.split(".")) or private([a.name for a in node.names])):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
        elif isinstance(node, ast.Import):
            found += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names
                      if not a.name.startswith("stalwart") and private(a.name.split("."))]
    return found


def test_no_private_module_of_another_package_is_imported() -> None:
    """Libraries are used through their public API (the MCP SDK's HTTP client factory
    is private: the client is built by stalwart and handed to the public transport)."""
    assert [r for path in sorted(SRC.rglob("*.py")) for r in private_imports(path)] == []


def test_the_private_import_check_sees_them(tmp_path: Path) -> None:
    """The checker itself: a private module, a private name and ``import a._b`` are
    reported; stalwart's own private modules and relative imports are not."""
    probe = tmp_path / "probe.py"
    probe.write_text("from mcp.shared._httpx_utils import f\nfrom a import _b\nimport a._c\n"
                     "from stalwart._clock import Clock\nfrom ._x import y\n")
    assert private_imports(probe) == [
        "probe.py:1 from mcp.shared._httpx_utils import f", "probe.py:2 from a import _b",
        "probe.py:3 import a._c"]


def local_stdlib_imports(path: Path) -> list[str]:
    """Imports of a standard-library module inside a function of ``path``: nothing to
    defer (it is installed, and cheap next to what the package imports anyway)."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            if any(n.split(".")[0] in sys.stdlib_module_names for n in names):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_standard_library_module_is_imported_in_a_function() -> None:
    """Function-local imports are for optional extras and slow imports (see
    LOCAL_IMPORTS); the standard library is imported at the top of the file."""
    assert [r for p in sorted(SRC.rglob("*.py")) for r in local_stdlib_imports(p)] == []


def test_the_local_stdlib_check_sees_one(tmp_path: Path) -> None:
    """The checker itself: ``import shlex`` in a function is reported, a third-party
    or top-level import is not."""
    probe = tmp_path / "probe.py"
    probe.write_text("import json\n\ndef f():\n    import shlex\n    import uvicorn\n")
    assert local_stdlib_imports(probe) == ["probe.py:4 import shlex"]

"""Telemetry uses the OpenTelemetry SDK through its public API only, and reaches into the
engine only through the hook inputs: read from the source, so the rule cannot rot."""

from __future__ import annotations

import ast
from pathlib import Path

import stalwart.telemetry

PACKAGE = Path(stalwart.telemetry.__file__).parent
ALLOWED_OUTSIDE = {"stalwart.errors", "stalwart.engine._interceptor"}
"""What telemetry may import from the rest of stalwart at run time: the errors, and the
engine's interceptor protocol with its inputs (``tests/test_arrows.py`` pins every
arrow, type-only imports included)."""


def sources() -> list[tuple[str, ast.Module]]:
    return [(path.name, ast.parse(path.read_text(), str(path)))
            for path in sorted(PACKAGE.glob("*.py"))]


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(name: str, tree: ast.Module) -> list[str]:
    """Private names of other code that ``tree`` uses: a ``_`` module or name imported
    from OpenTelemetry, an ``_`` attribute of anything but ``self``, a ``getattr`` of one."""
    found = []
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opentelemetry"):
            parts = [*(node.module or "").split("."), *(a.name for a in node.names)]
            found += [f"{where} imports {p}" for p in parts if private(p)]
        elif isinstance(node, ast.Import):
            found += [f"{where} imports {a.name}" for a in node.names
                      if a.name.startswith("opentelemetry")
                      and any(private(p) for p in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                found.append(f"{where} reads .{node.attr}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and private(node.args[1].value)):
            found.append(f"{where} {node.func.id}s {node.args[1].value}")
    return found


def test_no_private_name_of_the_sdk_or_of_another_object_is_used() -> None:
    """No ``opentelemetry.*._x`` import and no ``obj._x`` but our own ``self._x``."""
    found = [v for name, tree in sources() for v in violations(name, tree)]
    assert found == []


def test_the_check_catches_what_it_names() -> None:
    """The checker flags each kind of private use (so an empty list above means something)."""
    code = ast.parse(
        "from opentelemetry.sdk.trace import _Span\n"
        "from opentelemetry.sdk._logs import LoggerProvider\n"
        "import opentelemetry.sdk._logs\n"
        "provider._active_span_processor\n"
        "getattr(span, '_lock')\n"
        "self._mine\n")
    assert len(violations("x.py", code)) == 5


def runtime_imports(tree: ast.Module) -> list[str]:
    """The stalwart modules ``tree`` imports outside ``if TYPE_CHECKING:`` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and id(node) not in skip and node.level:
            if node.level == 1:
                continue  # telemetry's own modules
            base = "stalwart" + ("." + node.module if node.module else "")
            found.append(base)
    return found


def test_telemetry_imports_no_private_engine_module() -> None:
    """Telemetry reads runs through the hook inputs, not the engine's internals (it read
    ``_context._step_var`` once)."""
    imported = {m for _, tree in sources() for m in runtime_imports(tree)}
    assert imported <= ALLOWED_OUTSIDE, imported - ALLOWED_OUTSIDE

"""Finding workflows in the user's modules, the way ``python -m`` finds them.

A module whose top level runs a program (``asyncio.run(main())`` outside an
``if __name__ == "__main__":`` block) cannot be imported for its workflows: the import
would run that program here, or fail inside the CLI's event loop with "asyncio.run()
cannot be called from a running event loop". Its source is read before it is imported,
and such a call is reported with its line and the guard to add.
"""

from __future__ import annotations

import ast
import gc
import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from ..engine._workflow import Workflow
from ._common import CliError

__all__ = ["add_cwd_to_path", "find_workflow", "import_module", "imported_workflows",
           "resolve_ref", "workflows_in"]


def add_cwd_to_path() -> None:
    """Put the working directory first on ``sys.path``, as ``python -m`` does."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def import_module(name: str) -> ModuleType:
    """Import ``name``; any failure while importing it becomes a :class:`CliError`."""
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise CliError(f"{name!r} is not a module name")
    if name not in sys.modules:
        _refuse_a_script(name)
    with warnings.catch_warnings():
        # The coroutine a refused asyncio.run() was given is never awaited: say why
        # once, not also in a RuntimeWarning at exit.
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (name == exc.name
                                         or name.startswith(exc.name + ".")):
                raise CliError(f"no module named {name!r} (looked in the working "
                               "directory and on sys.path)") from None
            failure = f"cannot import module {name!r}: {type(exc).__name__}: {exc}"
        except RuntimeError as exc:
            failure = f"cannot import module {name!r}: {type(exc).__name__}: {exc}"
            if "running event loop" in str(exc):
                failure = (f"cannot import module {name!r}: it runs an event loop when "
                           f"imported ({exc}); {_GUARD}")
        except Exception as exc:
            failure = f"cannot import module {name!r}: {type(exc).__name__}: {exc}"
        gc.collect()  # the failed import's frames, and that coroutine, go here
    raise CliError(failure)


_GUARD = ('put that call under `if __name__ == "__main__":` so that importing the module '
          "only defines its workflows")

_RUNNERS = {("asyncio", "run"), ("anyio", "run"), ("trio", "run"), ("uvloop", "run")}


def _refuse_a_script(name: str) -> None:
    """Raise when ``name``'s source calls ``asyncio.run`` (or another loop runner) at
    its top level, outside ``if __name__ == "__main__":``."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return  # importing it reports this
    origin = getattr(spec, "origin", None)
    if spec is None or not isinstance(origin, str) or not origin.endswith(".py"):
        return
    try:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"), filename=origin)
    except (OSError, SyntaxError, ValueError):
        return  # importing it reports this
    line = _top_level_runner(tree)
    if line is not None:
        raise CliError(f"module {name!r} calls asyncio.run() when it is imported "
                       f"({origin}:{line}): importing it for its workflows would run that "
                       f"program; {_GUARD}")


def _top_level_runner(tree: ast.Module) -> int | None:
    """The line of a loop runner called by module-level code, or ``None``."""
    aliases = {alias.asname or alias.name: (node.module or "", alias.name)
               for node in tree.body if isinstance(node, ast.ImportFrom)
               for alias in node.names}
    modules = {alias.asname or alias.name: alias.name for node in tree.body
               if isinstance(node, ast.Import) for alias in node.names}

    def runs(call: ast.Call) -> bool:
        fn = call.func
        if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name):
            return (modules.get(fn.value.id, ""), fn.attr) in _RUNNERS
        return isinstance(fn, ast.Name) and aliases.get(fn.id) in _RUNNERS

    def scan(body: list[ast.stmt]) -> int | None:
        for stmt in body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if isinstance(stmt, ast.If) and _is_main_guard(stmt.test):
                found = scan(stmt.orelse)
            elif isinstance(stmt, ast.If | ast.Try | ast.With | ast.For | ast.While):
                found = scan([*stmt.body, *getattr(stmt, "orelse", []),
                              *getattr(stmt, "finalbody", []),
                              *(s for h in getattr(stmt, "handlers", []) for s in h.body)])
            else:
                found = next((n.lineno for n in ast.walk(stmt)
                              if isinstance(n, ast.Call) and runs(n)), None)
            if found is not None:
                return found
        return None

    return scan(tree.body)


def _is_main_guard(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, *test.comparators]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    mains = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return bool(names and mains)


def workflows_in(module: ModuleType) -> list[Workflow[Any, Any]]:
    """The workflow objects defined at the top level of ``module``."""
    found: dict[int, Workflow[Any, Any]] = {}
    for value in vars(module).values():
        if isinstance(value, Workflow):
            found.setdefault(id(value), value)
    return list(found.values())


def _attribute(module: ModuleType, qualname: str) -> Any:
    obj: Any = module
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return None
    return obj


def find_workflow(spec: str) -> Workflow[Any, Any]:
    """The workflow named by ``MODULE:WORKFLOW`` (or a ``MODULE`` holding exactly one)."""
    module_name, sep, attr = spec.partition(":")
    module = import_module(module_name)
    if not sep:
        found = workflows_in(module)
        if len(found) == 1:
            return found[0]
        names = ", ".join(sorted(wf.name for wf in found)) or "none"
        raise CliError(f"name the workflow as MODULE:WORKFLOW; {module_name} defines "
                       f"{len(found)} workflows ({names})")
    obj = _attribute(module, attr)
    if obj is None:
        names = ", ".join(sorted(wf.name for wf in workflows_in(module))) or "none"
        raise CliError(f"module {module_name!r} has no workflow {attr!r} "
                       f"(workflows there: {names})")
    if isinstance(obj, Workflow):
        return obj
    for wf in workflows_in(module):
        if wf.fn is obj:
            return wf
    raise CliError(f"{spec} is not a stalwart workflow (it is a {type(obj).__name__}; "
                   "decorate it with @runtime.workflow)")


def imported_workflows(specs: list[str]) -> list[Workflow[Any, Any]]:
    """The workflows ``--import`` options name: each ``MODULE:WORKFLOW``, or every
    workflow of ``MODULE``."""
    found: list[Workflow[Any, Any]] = []
    for spec in specs:
        found += [find_workflow(spec)] if ":" in spec else workflows_in(import_module(spec))
    return found


def resolve_ref(ref: str) -> Workflow[Any, Any]:
    """The workflow behind a run's ``workflow_ref`` (``module:qualname``).

    The reference names the workflow *function*; when the module binds the function and
    its :class:`Workflow` to different names, the workflow wrapping it is found.
    """
    if ref.startswith("__main__:"):
        raise CliError(
            f"{ref} was started from code run as __main__ (python -c, a notebook) that "
            "no other process can import; pass the module that defines the workflow with "
            "--import MODULE (for a script, its file name without .py, from its folder; "
            'its asyncio.run() must sit under `if __name__ == "__main__":`)')
    return find_workflow(ref)

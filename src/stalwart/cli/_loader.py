"""Finding workflows in the user's modules, the way ``python -m`` finds them."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any

from .._workflow import Workflow
from ._common import CliError

__all__ = ["add_cwd_to_path", "find_workflow", "import_module", "resolve_ref", "workflows_in"]


def add_cwd_to_path() -> None:
    """Put the working directory first on ``sys.path``, as ``python -m`` does."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def import_module(name: str) -> ModuleType:
    """Import ``name``; any failure while importing it becomes a :class:`CliError`."""
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise CliError(f"{name!r} is not a module name")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise CliError(f"no module named {name!r} (looked in the working directory "
                           "and on sys.path)") from None
        raise CliError(f"cannot import module {name!r}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        raise CliError(f"cannot import module {name!r}: {type(exc).__name__}: {exc}") from None


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


def resolve_ref(ref: str) -> Workflow[Any, Any]:
    """The workflow behind a run's ``workflow_ref`` (``module:qualname``).

    The reference names the workflow *function*; when the module binds the function and
    its :class:`Workflow` to different names, the workflow wrapping it is found.
    """
    if ref.startswith("__main__:"):
        raise CliError(f"{ref} was started from a script run as __main__; "
                       "pass the module that defines it with --import")
    return find_workflow(ref)

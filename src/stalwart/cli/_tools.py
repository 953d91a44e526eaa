"""``stalwart tools MODULE:REGISTRY``: a tool registry's tools, where they come from,
what they may do, whether they are healthy now and their breakers' states."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from ..errors import StalwartError
from ..remote import ToolRegistry, ToolStatus
from ._common import CliError, JsonOption, print_json, run_async
from ._loader import add_cwd_to_path, import_module
from ._output import PlainOption, Rows, console

__all__ = ["tools"]


def _registry(spec: str) -> ToolRegistry:
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise CliError(f"expected MODULE:REGISTRY, not {spec!r}")
    add_cwd_to_path()
    value: Any = getattr(import_module(module_name), attr, None)
    if not isinstance(value, ToolRegistry):
        raise CliError(f"{spec} is not a sw.ToolRegistry "
                       f"({'missing' if value is None else type(value).__name__})")
    return value


async def _statuses(registry: ToolRegistry) -> list[ToolStatus]:
    try:
        await registry.connect()
        return await registry.check()
    except StalwartError as exc:
        raise CliError(f"{type(exc).__name__}: {exc}", code=1) from None
    finally:
        await registry.close()


def tools(
    target: Annotated[str, typer.Argument(
        metavar="MODULE:REGISTRY", help="The sw.ToolRegistry to inspect (it is imported, "
        "its MCP servers connected and every health check run once).")],
    as_json: JsonOption = False,
    plain: PlainOption = False,
) -> None:
    """Tools of a registry: source, effect and scopes, health (and why not), breaker
    state, and whether an agent offers it to its model now."""
    statuses = run_async(_statuses(_registry(target)))
    if as_json:
        print_json({"tools": [s.to_json() for s in statuses]})
        return
    table = Rows(["tool", "source", "effect", "scopes", "health", "breaker", "offered"])
    for s in statuses:
        health = (Text("healthy", style="green") if s.healthy
                  else Text(f"unhealthy: {s.reason}", style="red"))
        table.add(s.name, s.source, s.effect, ",".join(s.scopes) or "-", health,
                  s.breaker or "-", "yes" if s.available else "no")
    table.print(console(), plain=plain)

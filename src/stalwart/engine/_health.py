"""Tool health as an agent sees it: which of its tools are unavailable now, and why.

A health view (a :class:`~stalwart.ToolRegistry`) answers from its last checks; an agent
asks it before each model turn, through a journaled step (:func:`unavailable_tools`), so
a replayed run shows its model the same tools as the first time. Unavailable tools leave
the model's tool list, and the model is told which and why, and again when they are back
(:func:`health_note`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol, runtime_checkable

from ._execution import Execution
from ._steps import recorded_value

__all__ = ["ToolHealthView", "health_note", "unavailable_tools"]


@runtime_checkable
class ToolHealthView(Protocol):
    """What an agent asks about its tools' health (``Agent(health=...)``)."""

    def unavailable(self, names: Collection[str]) -> Mapping[str, str]:
        """Of ``names``, the tools unavailable now, each with the reason (one line)."""
        ...


async def unavailable_tools(ex: Execution, agent: str, view: ToolHealthView | None,
                            names: Collection[str]) -> dict[str, str]:
    """The unavailable tools for this turn, journaled (``tools:<agent>``)."""
    if view is None:
        return {}
    value = await recorded_value(ex, f"tools:{agent}",
                                 lambda: {k: str(v) for k, v in view.unavailable(names).items()})
    return dict(value)


def health_note(before: Mapping[str, str], now: Mapping[str, str]) -> str | None:
    """What to tell the model when the unavailable tools changed (``None``: nothing)."""
    lines = [f"The tool {name} is unavailable now ({reason}); do not call it."
             for name, reason in sorted(now.items()) if before.get(name) != reason]
    lines += [f"The tool {name} is available again." for name in sorted(set(before) - set(now))]
    return "\n".join(lines) or None

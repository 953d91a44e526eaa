"""Option checks shared by the commands.

Bounds are checked in a callback rather than with typer's ``min=``: ``min=`` prints the
bound in the help as a metavar (``<float range> [x>=0]``) instead of the option's
meaning. A value out of bounds is the same one-line usage error (exit 2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer

__all__ = ["at_least"]

N = TypeVar("N", int, float)


def at_least(minimum: float) -> Callable[[N | None], N | None]:
    """A typer callback refusing a number below ``minimum`` (``None`` passes)."""

    def check(value: N | None) -> N | None:
        if value is not None and value < minimum:
            raise typer.BadParameter(f"must be at least {minimum:g}, not {value:g}")
        return value

    return check

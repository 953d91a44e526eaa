"""The parts of a state graph: its entry and exit, nodes, conditional edges, joins.

Plain data, shared by the builder (:mod:`._graph`) and the runner (:mod:`._graph_run`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["END", "START", "Branch", "Join", "Node", "S"]

START = "__start__"
"""The graph's entry: ``graph.edge(START, "first")``."""
END = "__end__"
"""The graph's exit: ``graph.edge("last", END)``; a router may return it."""

S = TypeVar("S", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Node:
    """A node of a graph: its function and how it is called."""

    name: str
    fn: Callable[..., Any]
    takes_ctx: bool
    is_async: bool


@dataclass(frozen=True, slots=True)
class Branch:
    """A conditional edge: ``router(state)`` picks among ``targets`` after ``source``."""

    source: str
    router: Callable[[Any], Any]
    path_map: dict[str, str]
    """What the router may return, mapped to the node (or END) it means."""


@dataclass(frozen=True, slots=True)
class Join:
    """``target`` runs once every one of ``sources`` has run since it last did."""

    sources: tuple[str, ...]
    target: str

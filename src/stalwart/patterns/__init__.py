"""Coordination patterns built on the durable core: approvals, sagas, supervisors,
state graphs, handoffs, actors.

Each is made of the engine's public pieces (steps, child runs, waits, the journaled
clock), so it is crash-safe, bounded and traced like any workflow code, and adds no
journal or scheduler of its own. The ones the context offers as methods
(``ctx.supervise(...)``, ``ctx.saga()``) are implemented in the engine, on its step API
(:mod:`stalwart.engine._supervisor`, :mod:`stalwart.engine._saga`), since the context
cannot import what imports it; the modules here are built with the context and agents,
as user code is. The names here are re-exported from :mod:`stalwart`. See
``docs/patterns.md``.
"""

from __future__ import annotations

from ..engine._saga import Saga as Saga
from ..engine._supervisor import ChildSpec as ChildSpec
from ._graph import END as END
from ._graph import START as START
from ._graph import CompiledGraph as CompiledGraph
from ._graph import Graph as Graph
from ._handoff import Handoff as Handoff
from ._handoff import Team as Team
from ._handoff import TeamResult as TeamResult

__all__ = ["END", "START", "ChildSpec", "CompiledGraph", "Graph", "Handoff", "Saga", "Team",
           "TeamResult"]

"""Coordination patterns built on the durable core: approvals, sagas, supervisors.

Each is made of the engine's public pieces (steps, child runs, waits, the journaled
clock), so it is crash-safe, bounded and traced like any workflow code, and adds no
journal or scheduler of its own. Use them through the context
(``ctx.supervise(...)``); the names here are re-exported from :mod:`stalwart`.
See ``docs/patterns.md``.
"""

from __future__ import annotations

from ._saga import Saga as Saga
from ._supervisor import ChildSpec as ChildSpec

__all__ = ["ChildSpec", "Saga"]

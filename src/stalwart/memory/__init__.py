"""Context windows and memory: what an agent's requests hold, and where the rest goes.

:class:`ContextWindow` is a capacity contract on an agent's history (``Agent(context=
...)``): every request is measured before it is sent, and one that would not fit is
handled by an explicit policy — :class:`Reject`, :class:`Evict`, :class:`Summarize` or
:class:`Page` — each action journaled (``runs trace`` shows it). :class:`Memory` is an
agent's warm and cold memory in the store, searched by its ``recall`` tool. See
``docs/context.md``.
"""

from __future__ import annotations

from ._warm import Memory as Memory
from ._warm import MemoryHit as MemoryHit
from ._window import ContextWindow as ContextWindow
from ._window import Decision as Decision
from ._window import Evict as Evict
from ._window import Moved as Moved
from ._window import Page as Page
from ._window import Reject as Reject
from ._window import Summarize as Summarize
from ._window import WindowLimit as WindowLimit
from ._window import WindowPolicy as WindowPolicy
from ._window import WindowState as WindowState

__all__ = [
    "ContextWindow",
    "WindowPolicy",
    "Reject",
    "Evict",
    "Summarize",
    "Page",
    "Memory",
    "MemoryHit",
    "WindowLimit",
    "WindowState",
    "Decision",
    "Moved",
]

"""Least privilege: which tool calls an agent's model may make, decided in one place.

A :class:`~stalwart.Tool` declares its effect (``read``, ``write``, ``privileged``) and
its scopes; an agent's :class:`Grant` is its allowlist over them. :func:`decide` is the
one rule every model-requested tool call goes through before anything runs: a call the
grant does not cover is refused (the model gets a ``permission_denied`` tool error, the
journal a ``tool_call_refused`` event), never executed.

The rule is pure (a tool, a grant in, a :class:`Verdict` out), so the agent loop, the
injection battery and the docs all mean the same thing by "allowed".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, final

from ..errors import ConfigurationError
from ._tools import EFFECTS, Effect, Tool, _scopes

__all__ = ["Grant", "Verdict", "decide", "scope_granted"]


@final
@dataclass(frozen=True, slots=True, init=False)
class Grant:
    """An agent's allowlist: the tool calls its model may make.

    A call is allowed when the tool's effect is among ``effects``, every scope the tool
    declares is granted by ``scopes``, and (when ``tools`` is given) its name is listed.
    A granted scope ``"email:*"`` covers every scope that starts with ``"email:"``;
    ``"*"`` covers all.

    Tools of the agent the grant does not cover are not shown to its model; a call to
    one anyway (an injected instruction names it) is refused and audited.

    Args:
        effects: the effects allowed (default: ``read`` only).
        scopes: the scopes granted (default: none, so only tools without scopes).
        tools: if given, only these tool names (on top of effects and scopes).

    Example::

        sw.Grant(effects={"read", "write"}, scopes={"calendar:*", "email:draft"})
    """

    effects: frozenset[Effect]
    scopes: frozenset[str]
    tools: frozenset[str] | None

    def __init__(self, *, effects: Iterable[Effect] = ("read",),
                 scopes: Iterable[str] = (), tools: Iterable[str] | None = None) -> None:
        if isinstance(effects, str):
            raise ConfigurationError(f"Grant: effects must be a collection, not the string "
                                     f"{effects!r}")
        eff = frozenset(effects)
        bad = sorted(repr(e) for e in eff if e not in EFFECTS)
        if bad:
            raise ConfigurationError(f"Grant: unknown effect(s) {', '.join(bad)} "
                                     f"(known: {', '.join(EFFECTS)})")
        if isinstance(tools, str):
            raise ConfigurationError(f"Grant: tools must be a collection of names, not the "
                                     f"string {tools!r}")
        object.__setattr__(self, "effects", eff)
        object.__setattr__(self, "scopes", _scopes("Grant", scopes))
        object.__setattr__(self, "tools", None if tools is None else frozenset(tools))

    def allows(self, tool: Tool[Any, Any]) -> bool:
        """Whether this grant covers calls of ``tool``."""
        return _not_granted(tool, self) is None


def scope_granted(pattern: str, scope: str) -> bool:
    """Whether the granted ``pattern`` covers ``scope``: equal, ``"*"``, or a prefix
    pattern ``"area:*"`` covering ``"area:..."``."""
    if pattern in ("*", scope):
        return True
    return pattern.endswith(":*") and scope.startswith(pattern[:-1])


@final
@dataclass(frozen=True, slots=True)
class Verdict:
    """What happens to one tool call a model asked for.

    Attributes:
        action: ``allow`` (run it), ``refuse`` (a tool error to the model, audited).
        reason: why not allowed: ``not_granted``.
        message: the sentence the model and the audit record read.
    """

    action: Literal["allow", "refuse"]
    reason: str = ""
    message: str = ""


ALLOW = Verdict("allow")


def _not_granted(tool: Tool[Any, Any], grant: Grant) -> str | None:
    if grant.tools is not None and tool.name not in grant.tools:
        return f"tool {tool.name!r} is not in this agent's allowlist"
    if tool.effect not in grant.effects:
        return (f"tool {tool.name!r} has effect {tool.effect!r}; this agent may use "
                f"{', '.join(sorted(grant.effects)) or 'no'} tools")
    missing = sorted(s for s in tool.scopes
                     if not any(scope_granted(p, s) for p in grant.scopes))
    if missing:
        return f"tool {tool.name!r} needs scope(s) {', '.join(missing)}, not granted"
    return None


def decide(tool: Tool[Any, Any], *, grant: Grant | None) -> Verdict:
    """The verdict on a call of ``tool`` by an agent with ``grant`` (``None``: every
    tool the agent was given is allowed)."""
    if grant is not None:
        problem = _not_granted(tool, grant)
        if problem is not None:
            return Verdict("refuse", "not_granted", problem)
    return ALLOW

"""Least privilege and taint: which tool calls an agent's model may make, decided in
one place.

A :class:`~stalwart.Tool` declares its effect (``read``, ``write``, ``privileged``) and
its scopes; an agent's :class:`Grant` is its allowlist over them. Every message of an
agent's context carries its :class:`~stalwart.models.Origin`, and the agent's
:class:`Trust` says which origins it trusts. :func:`decide` is the one rule every
model-requested tool call goes through before anything runs:

1. a call the grant does not cover is refused (``not_granted``);
2. a ``privileged`` call while the context the model saw holds untrusted content is
   refused, or held for a human's approval of its exact arguments, as the trust policy
   says (``untrusted_context``);
3. anything else runs.

A refusal sends the model a ``permission_denied`` tool error and journals a
``tool_call_refused`` event, with the untrusted sources that triggered it; the call is
never executed. The rule is pure (a tool, a grant, a trust policy and the context's
origins in, a :class:`Verdict` out), so the agent loop, the injection battery and the
docs all mean the same thing by "allowed".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, final, get_args

from pydantic import BaseModel, TypeAdapter

from ..errors import ConfigurationError
from ..models import Message, Origin, OriginKind
from ._tools import EFFECTS, Effect, Tool, _scopes

__all__ = ["DEFAULT_TRUST", "STALWART", "Grant", "Sourced", "Trust", "Verdict", "decide",
           "input_messages", "input_text", "origins_payload", "scope_granted",
           "untrusted_sources"]

STALWART = Origin.developer("stalwart")
"""The origin of what the agent loop itself writes into a context (a repair, a refusal,
a re-ask)."""

_KINDS: tuple[str, ...] = get_args(OriginKind)


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
@dataclass(frozen=True, slots=True, init=False)
class Trust:
    """Which origins an agent trusts, and what a privileged call does when its context
    holds content from any other.

    Args:
        trusted: origin kinds (``"user"``) or labels (``"tool:get_time"``) to trust.
            Default: the system prompt, the developer, the user and the model's own
            turns; so tool outputs, MCP results, retrieved documents, the web, other
            agents and the blackboard are untrusted.
        on_privileged: with untrusted content in the context the model saw, a
            ``privileged`` tool call is ``"refuse"``-d (default) or held for
            ``"approve"``-al by a human (``ctx.approval``, bound to its exact arguments).
        approval_timeout: seconds to wait for that approval (then refused).

    Example::

        sw.Trust(trusted={"system", "user", "tool:get_time"}, on_privileged="approve")
    """

    trusted: frozenset[str]
    on_privileged: Literal["refuse", "approve"]
    approval_timeout: float | None

    def __init__(self, *, trusted: Iterable[str] = ("system", "developer", "user", "model"),
                 on_privileged: Literal["refuse", "approve"] = "refuse",
                 approval_timeout: float | None = 86_400.0) -> None:
        if isinstance(trusted, str):
            raise ConfigurationError(f"Trust: trusted must be a collection of origins, not "
                                     f"the string {trusted!r}")
        names = frozenset(trusted)
        bad = sorted(repr(n) for n in names
                     if not isinstance(n, str) or n.partition(":")[0] not in _KINDS)
        if bad:
            raise ConfigurationError(f"Trust: unknown origin(s) {', '.join(bad)} (an origin "
                                     f"kind, or kind:source; kinds: {', '.join(_KINDS)})")
        if on_privileged not in ("refuse", "approve"):
            raise ConfigurationError(f"Trust: on_privileged must be 'refuse' or 'approve', "
                                     f"not {on_privileged!r}")
        if approval_timeout is not None and not approval_timeout > 0:
            raise ConfigurationError("Trust: approval_timeout must be > 0 seconds or None")
        object.__setattr__(self, "trusted", names)
        object.__setattr__(self, "on_privileged", on_privileged)
        object.__setattr__(self, "approval_timeout", approval_timeout)

    def trusts(self, origin: Origin) -> bool:
        """Whether content from ``origin`` is trusted: its kind or its label is listed."""
        return origin.kind in self.trusted or origin.label in self.trusted


DEFAULT_TRUST = Trust()
"""An agent's default: tool outputs, retrieval, the web, other agents untrusted."""


@final
@dataclass(frozen=True, slots=True)
class Sourced:
    """Content for an agent's input with where it came from, e.g. a retrieved document
    or another agent's output: ``agent.run(ctx, ["Summarize:", sw.Sourced(doc,
    sw.Origin.retrieval("kb/42"))])``. A plain string in an input is the user's."""

    content: Any
    origin: Origin


def input_text(value: Any) -> str:
    """An agent's input (or a tool's result) as the text of a message: a string as it
    is, a pydantic model or any JSON-able value as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(TypeAdapter(Any).dump_python(value, mode="json"))
    except Exception:
        return str(value)


def input_messages(value: Any) -> list[Message]:
    """An agent's input as the user messages that open its conversation, each with its
    origin: a :class:`Sourced` value has its own; a list holding any :class:`Sourced`
    or :class:`Message` is one message per item (a string is the user's); anything
    else is one message of the user's."""
    if isinstance(value, Sourced):
        return [Message.user(input_text(value.content), origin=value.origin)]
    if isinstance(value, list | tuple) and any(isinstance(v, Sourced | Message)
                                               for v in value):
        out: list[Message] = []
        for item in value:
            if isinstance(item, Message):
                out.append(item)
            else:
                out.extend(input_messages(item))
        return out
    return [Message.user(input_text(value), origin=Origin.user())]


def origins_payload(messages: Sequence[Message], start: int, trust: Trust | None) -> str:
    """The ``context_origins`` record of ``messages[start:]`` (the model's own turns
    left out: the journal holds them as its results)."""
    return json.dumps({"messages": [
        {"index": i, "role": m.role, "origin": m.provenance.label,
         **({} if trust is None else {"trusted": trust.trusts(m.provenance)})}
        for i, m in enumerate(messages) if i >= start and m.role != "assistant"]})


def untrusted_sources(messages: Sequence[Message], trust: Trust,
                      tools: Sequence[Tool[Any, Any]] = ()) -> tuple[str, ...]:
    """The labels of the origins in ``messages`` (and of the descriptions of the
    ``tools`` offered with them) that ``trust`` does not trust, each once, in order of
    first appearance. The model's own turns (assistant messages without a stated
    origin) are never a source: whatever they could carry in, the context they came
    from holds already."""
    origins = [m.provenance for m in messages
               if not (m.role == "assistant" and m.origin is None)]
    origins += [t.description_origin for t in tools]
    return tuple(dict.fromkeys(o.label for o in origins if not trust.trusts(o)))


@final
@dataclass(frozen=True, slots=True)
class Verdict:
    """What happens to one tool call a model asked for.

    Attributes:
        action: ``allow`` (run it), ``refuse`` (a tool error to the model, audited),
            ``approve`` (run it only if a human approves its exact arguments).
        reason: why not simply allowed: ``not_granted`` or ``untrusted_context``.
        message: the sentence the model and the audit record read.
        untrusted: the untrusted origins in the context that triggered it.
    """

    action: Literal["allow", "refuse", "approve"]
    reason: str = ""
    message: str = ""
    untrusted: tuple[str, ...] = ()


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


def decide(tool: Tool[Any, Any], *, grant: Grant | None, trust: Trust | None = None,
           untrusted: Sequence[str] = ()) -> Verdict:
    """The verdict on a call of ``tool`` by an agent with ``grant`` (``None``: every
    tool the agent was given is allowed) and ``trust`` (``None``: no taint check),
    whose model saw content from the ``untrusted`` origins (see the module)."""
    if grant is not None:
        problem = _not_granted(tool, grant)
        if problem is not None:
            return Verdict("refuse", "not_granted", problem)
    if trust is not None and tool.effect == "privileged" and untrusted:
        return Verdict(trust.on_privileged, "untrusted_context",
                       f"tool {tool.name!r} is privileged and the context holds untrusted "
                       f"content (from {', '.join(untrusted)})", tuple(untrusted))
    return ALLOW

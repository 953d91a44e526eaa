"""A fan-in's results as an aggregator's supporting messages.

When sub-agents' results are gathered into an aggregator, each result enters the
aggregator's conversation as its own user message after the task, marked *supporting*:
never pinned (the system prompt, the task and the latest user turn are), so the
aggregator's window policy can evict, summarize or refuse them before the call, as it
would any other turn. Glued into the task instead, they would be pinned with it: a
window could only refuse, and an agent without one would send the provider a request
over its limit (a 400).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from ..engine._privilege import Sourced, input_text
from ..errors import ConfigurationError
from ..models import Message, Origin

__all__ = ["Results", "result_messages"]

Results: TypeAlias = "Mapping[str, Any] | Sequence[Any]"
"""Results by who produced them (``{"researcher": notes, ...}``), or in order."""


def result_messages(results: Results) -> list[Message]:
    """One user message per result, headed by its label, with its origin: another
    agent's (``agent:<label>``) unless the result is a :class:`~stalwart.Sourced` (its
    own origin) or already a user :class:`~stalwart.models.Message` (as it is).

    Raises:
        ConfigurationError: ``results`` is neither a mapping nor a sequence, or holds a
            message that is not a user message.
    """
    if isinstance(results, Mapping):
        items = [(str(k), v) for k, v in results.items()]
    elif isinstance(results, Sequence) and not isinstance(results, str | bytes):
        items = [(f"result {i}", v) for i, v in enumerate(results, 1)]
    else:
        raise ConfigurationError("a fan-in's results must be a mapping of labels to "
                                 f"results or a sequence of results, not {results!r}")
    out: list[Message] = []
    for label, value in items:
        if isinstance(value, Message):
            if value.role != "user":
                raise ConfigurationError(f"fan-in result {label}: a message given as a "
                                         f"result must be a user message, not {value.role}")
            out.append(value)
            continue
        origin = Origin.agent(label)
        if isinstance(value, Sourced):
            origin, value = value.origin, value.content
        out.append(Message.user(f"[{label}]\n{input_text(value)}", origin=origin))
    return out

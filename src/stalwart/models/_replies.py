"""What a scripted model may answer, turned into a :class:`ModelResponse`.

:class:`~stalwart.models.SimulatedModel` scripts and
:class:`~stalwart.models.FunctionModel` functions answer in the same few shapes, so a
test can write the reply it means instead of building a response: text, the tool calls
to request, a ready :class:`ModelResponse`, or a structured value (a pydantic model, a
dict, a list...) that is sent as JSON, which is what an agent with an ``output_type``
reads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, TypeAlias

from pydantic import BaseModel, JsonValue, TypeAdapter

from stalwart.errors import ConfigurationError

from ._tokens import count_tokens
from ._types import ModelRequest, ModelResponse, ToolCallRequest, Usage

__all__ = ["ScriptedReply", "as_response", "request_tokens"]

ScriptedReply: TypeAlias = (ModelResponse | str | ToolCallRequest | Sequence[ToolCallRequest]
                            | BaseModel | JsonValue)
"""What a scripted model answers (a :class:`~stalwart.models.SimulatedModel` script, a
:class:`~stalwart.models.FunctionModel` function):

- ``str``: the text of the answer (sent as it is);
- a :class:`ToolCallRequest`, or a list of them: the tool calls to request;
- a :class:`ModelResponse`: sent as it is (its ``model`` and ``provider`` filled in
  when empty);
- a pydantic model or a JSON value (a dict, a list, a number, ``True``, ``None``):
  a structured answer, sent as its JSON text. Return ``json.dumps(text)`` for a typed
  answer that is itself a string.

A :class:`~stalwart.errors.ModelError` instance in a scripted *list* is raised instead
(a function raises it itself).
"""

_ANY = TypeAdapter(Any)


def as_response(item: ScriptedReply, request: ModelRequest, *, model: str, provider: str,
                raw_id: str | None) -> ModelResponse:
    """``item`` as the response of ``model`` to ``request``; usage is estimated with
    :func:`~stalwart.models.count_tokens` unless ``item`` is a full response."""
    if isinstance(item, ModelResponse):
        return item.model_copy(update={"model": item.model or model,
                                       "provider": item.provider or provider})
    content: str | None
    calls: tuple[ToolCallRequest, ...] = ()
    if isinstance(item, str):
        content = item
    elif isinstance(item, ToolCallRequest):
        content, calls = None, (item,)
    elif (isinstance(item, Sequence) and item
          and all(isinstance(c, ToolCallRequest) for c in item)):
        content, calls = None, tuple(c for c in item if isinstance(c, ToolCallRequest))
    else:
        content = _structured(item)
    output = (content or "") + "".join(c.name + c.arguments for c in calls)
    return ModelResponse(
        content=content,
        tool_calls=calls,
        finish_reason="tool_calls" if calls else "stop",
        usage=Usage(input_tokens=request_tokens(request), output_tokens=count_tokens(output)),
        model=model,
        provider=provider,
        raw_id=raw_id,
    )


def _structured(value: Any) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        return _ANY.dump_json(value).decode()
    except Exception as exc:
        raise ConfigurationError(
            f"a scripted reply of type {type(value).__name__} is neither text, tool calls, "
            f"a ModelResponse nor a JSON-compatible value: {exc}") from exc


def request_tokens(request: ModelRequest) -> int:
    """The input tokens of ``request``, estimated: its messages, tool calls and tool
    schemas, with a few tokens of framing per message, as the chat formats add.

    A conversation sends its history again at every turn; each part's count is
    remembered (:func:`_part_tokens`), so a turn counts its new messages, not the
    history (recounting made a 200-turn simulated agent quadratic in CPU)."""
    parts = [m.content or "" for m in request.messages]
    parts += [c.name + c.arguments for m in request.messages for c in m.tool_calls]
    parts += [json.dumps(t.to_openai()) for t in request.tools]
    return sum(_part_tokens(p) for p in parts) + 4 * len(request.messages)


_CACHED_PART_CHARS = 1 << 16
"""Parts longer than this are counted each time: the cache holds at most
``maxsize`` x 64 KiB of text."""


def _part_tokens(text: str) -> int:
    return _cached_part(text) if len(text) <= _CACHED_PART_CHARS else count_tokens(text)


@lru_cache(maxsize=4096)
def _cached_part(text: str) -> int:
    return count_tokens(text)

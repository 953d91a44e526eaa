"""The provider-neutral vocabulary of a model call.

Agents, policies and the journal speak these types; only the adapters speak a provider's
wire format. Every type is a frozen pydantic model, so a :class:`ModelResponse` written
to the journal as JSON reads back equal to the original (the engine replays recorded
model calls instead of repeating them), and the converters to the OpenAI and Anthropic
formats live next to the data they convert.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from itertools import accumulate
from typing import Literal, final

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

__all__ = [
    "MAX_ARGUMENT_BYTES",
    "MAX_ARGUMENT_DEPTH",
    "FinishReason",
    "Message",
    "ModelOptions",
    "ModelRequest",
    "ModelResponse",
    "Origin",
    "OriginKind",
    "Role",
    "ToolCallRequest",
    "ToolSpec",
    "Usage",
    "parse_tool_arguments",
]

Role = Literal["system", "user", "assistant", "tool"]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "other"]
"""Why generation ended, normalised across providers.

``stop`` (a natural end or a stop sequence), ``length`` (``max_tokens`` reached),
``tool_calls`` (the model wants tools run), ``content_filter`` (only seen on a response
that was *returned*; adapters raise :class:`~stalwart.errors.ContentFilterError` instead),
``other`` (anything a provider adds later).
"""

JsonObject = dict[str, JsonValue]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


@final
class ToolCallRequest(BaseModel):
    """A tool call the model asked for.

    ``arguments`` is the raw JSON text exactly as the model produced it, which is what
    the journal keeps and what goes back to the provider; :attr:`parsed` and
    :attr:`parse_error` interpret it. Models do produce invalid JSON, and that must reach
    the agent as data (so it can re-ask), not as an exception in the adapter.
    """

    model_config = _FROZEN

    id: str
    name: str
    arguments: str = "{}"

    @classmethod
    def create(cls, id: str, name: str, arguments: Mapping[str, JsonValue] | None = None,
               ) -> ToolCallRequest:
        """Build a call from already-parsed arguments (tests, scripted models)."""
        text = json.dumps(dict(arguments or {}), separators=(",", ":"), sort_keys=True)
        return cls(id=id, name=name, arguments=text)

    @property
    def parsed(self) -> JsonObject | None:
        """The arguments as a JSON object, or ``None`` when they are not one (or exceed
        the default limits of :func:`parse_tool_arguments`)."""
        value, _ = parse_tool_arguments(self.arguments)
        return value

    @property
    def parse_error(self) -> str | None:
        """Why :attr:`arguments` is not a JSON object, or ``None`` when it is."""
        _, error = parse_tool_arguments(self.arguments)
        return error


MAX_ARGUMENT_BYTES = 1_048_576
"""Default cap on a tool call's arguments: 1 MiB of UTF-8 JSON text."""
MAX_ARGUMENT_DEPTH = 64
"""Default cap on how deeply a tool call's arguments nest (objects and arrays)."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def parse_tool_arguments(text: str, *, max_bytes: int = MAX_ARGUMENT_BYTES,
                         max_depth: int = MAX_ARGUMENT_DEPTH,
                         ) -> tuple[JsonObject | None, str | None]:
    """A tool call's raw arguments as a JSON object, or why they are not one.

    The one reader of model-produced arguments, whichever adapter produced them:
    text over ``max_bytes`` or nested deeper than ``max_depth`` is refused *before* it
    is parsed (a 1,000-deep array would otherwise exhaust the parser's recursion), and
    reported like any other malformed call, so the agent hands it back to the model.

    Returns:
        ``(arguments, None)``, or ``(None, reason)``.
    """
    if not text.strip():
        return {}, None  # some providers send "" for a call without arguments
    size = len(text) if len(text) > max_bytes else len(text.encode("utf-8", "replace"))
    if size > max_bytes:
        return None, f"arguments are {size} bytes, over the limit of {max_bytes}"
    depth = _depth(text)
    if depth > max_depth:
        return None, f"arguments nest {depth} levels deep, over the limit of {max_depth}"
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, f"arguments are not valid JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"arguments must be a JSON object, got {type(value).__name__}"
    return value, None


def _depth(text: str) -> int:
    """How deeply brackets outside strings nest in ``text`` (without parsing it)."""
    steps = (1 if b in "[{" else -1 for b in _BRACKET.findall(_STRING.sub("", text)))
    return max(accumulate(steps, initial=0))


OriginKind = Literal["system", "developer", "user", "model", "tool", "mcp", "retrieval",
                     "web", "agent", "blackboard"]
"""Where a piece of an agent's context came from (see :class:`Origin`)."""


@final
class Origin(BaseModel):
    """Where a message of an agent's context came from: provenance.

    ``kind`` is the channel (the system prompt, the developer, the user, the model's own
    turn, a tool's output, an MCP server's tool, a retrieved document, the web, another
    agent, the blackboard) and ``source`` which one (the tool's name, ``server/tool``,
    the document's id, the URL, the agent's name, the entry's key). Whether an origin is
    trusted is not a property of the content but a policy over origins
    (:class:`~stalwart.Trust`). Build with the class methods.
    """

    model_config = _FROZEN

    kind: OriginKind
    source: str = ""

    @property
    def label(self) -> str:
        """``kind`` or ``kind:source``: how the journal and the trace name it."""
        return f"{self.kind}:{self.source}" if self.source else self.kind

    def __str__(self) -> str:
        return self.label

    @classmethod
    def system(cls) -> Origin:
        """The agent's instructions."""
        return cls(kind="system")

    @classmethod
    def developer(cls, source: str = "") -> Origin:
        """Text the program itself wrote (a template, a fixed prompt)."""
        return cls(kind="developer", source=source)

    @classmethod
    def user(cls, source: str = "") -> Origin:
        """The user the agent works for."""
        return cls(kind="user", source=source)

    @classmethod
    def model(cls, source: str = "") -> Origin:
        """The model's own turn."""
        return cls(kind="model", source=source)

    @classmethod
    def tool(cls, name: str) -> Origin:
        """The output of the local tool ``name``."""
        return cls(kind="tool", source=name)

    @classmethod
    def mcp(cls, server: str, tool: str) -> Origin:
        """The output of ``tool`` on the MCP server ``server``."""
        return cls(kind="mcp", source=f"{server}/{tool}")

    @classmethod
    def retrieval(cls, source: str) -> Origin:
        """A retrieved document (its id or collection)."""
        return cls(kind="retrieval", source=source)

    @classmethod
    def web(cls, url: str) -> Origin:
        """A page from the web."""
        return cls(kind="web", source=url)

    @classmethod
    def agent(cls, name: str) -> Origin:
        """The output of another agent."""
        return cls(kind="agent", source=name)

    @classmethod
    def blackboard(cls, key: str) -> Origin:
        """An entry of a shared blackboard."""
        return cls(kind="blackboard", source=key)


_ROLE_ORIGIN: dict[str, OriginKind] = {"system": "system", "user": "user",
                                        "assistant": "model", "tool": "tool"}


@final
class Message(BaseModel):
    """One turn of a conversation.

    ``tool_calls`` appear only on assistant messages; ``tool_call_id`` (and optionally
    ``name``) only on tool messages, which carry a tool's result as ``content``.
    ``origin`` is where the content came from (provenance; never sent to a provider);
    when it is not set, :attr:`provenance` infers it from the role.
    """

    model_config = _FROZEN

    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCallRequest, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    origin: Origin | None = None

    @property
    def provenance(self) -> Origin:
        """:attr:`origin`, or what the role implies: a system message is the system's,
        a user message the user's, an assistant message the model's, a tool message
        the output of the tool it names."""
        if self.origin is not None:
            return self.origin
        kind = _ROLE_ORIGIN[self.role]
        return Origin(kind=kind, source=(self.name or "") if kind == "tool" else "")

    @model_validator(mode="after")
    def _check_role_fields(self) -> Message:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        if self.role != "tool" and self.tool_call_id is not None:
            raise ValueError("only tool messages carry a tool_call_id")
        return self

    @classmethod
    def system(cls, content: str, *, origin: Origin | None = None) -> Message:
        """A system (instructions) message."""
        return cls(role="system", content=content, origin=origin)

    @classmethod
    def user(cls, content: str, *, name: str | None = None,
             origin: Origin | None = None) -> Message:
        """A user message (``origin``: where its content came from, when that is not
        the user: a retrieved document, another agent's output...)."""
        return cls(role="user", content=content, name=name, origin=origin)

    @classmethod
    def assistant(cls, content: str | None = None, *,
                  tool_calls: Sequence[ToolCallRequest] = ()) -> Message:
        """An assistant message, possibly asking for tool calls."""
        return cls(role="assistant", content=content, tool_calls=tuple(tool_calls))

    @classmethod
    def tool(cls, content: str, *, tool_call_id: str, name: str | None = None,
             origin: Origin | None = None) -> Message:
        """The result of the tool call ``tool_call_id``."""
        return cls(role="tool", content=content, tool_call_id=tool_call_id, name=name,
                   origin=origin)


def _empty_object_schema() -> JsonObject:
    return {"type": "object", "properties": {}}


@final
class ToolSpec(BaseModel):
    """A tool the model may call: its name, what it does, and a JSON schema of its input."""

    model_config = _FROZEN

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = ""
    parameters: JsonObject = Field(default_factory=_empty_object_schema)

    def to_openai(self) -> JsonObject:
        """The Chat Completions ``tools`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def to_anthropic(self) -> JsonObject:
        """The Messages API ``tools`` entry."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.parameters,
        }


@final
class Usage(BaseModel):
    """Tokens consumed by one call."""

    model_config = _FROZEN

    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


@final
class ModelOptions(BaseModel):
    """Sampling and length options; ``None`` leaves the provider's default."""

    model_config = _FROZEN

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    tool_choice: Literal["auto", "none", "required"] | None = None


@final
class ModelRequest(BaseModel):
    """Everything a model needs for one completion.

    Attributes:
        messages: the conversation so far, oldest first (a system message first when
            there are instructions; then user, assistant and tool turns).
        tools: the tools the model may ask for.
        options: sampling and length options.
        output_schema: the JSON schema the final answer must fit (an agent's or
            ``ctx.llm``'s ``output_type``), or ``None`` for free text. The agent also
            states it in its system message, which is all the provider adapters send;
            the offline simulator answers with a value that fits it.
    """

    model_config = _FROZEN

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    options: ModelOptions = ModelOptions()
    output_schema: JsonObject | None = None

    @model_validator(mode="after")
    def _check_messages(self) -> ModelRequest:
        if not self.messages:
            raise ValueError("a model request needs at least one message")
        names = [t.name for t in self.tools]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate tool names in {names}")
        return self

    @classmethod
    def of(cls, *messages: Message | str, tools: Sequence[ToolSpec] = (),
           options: ModelOptions | None = None,
           output_schema: Mapping[str, JsonValue] | None = None) -> ModelRequest:
        """Shorthand: plain strings become user messages."""
        msgs = tuple(Message.user(m) if isinstance(m, str) else m for m in messages)
        return cls(messages=msgs, tools=tuple(tools), options=options or ModelOptions(),
                   output_schema=None if output_schema is None else dict(output_schema))


@final
class ModelResponse(BaseModel):
    """What one completion returned, in the form the journal records."""

    model_config = _FROZEN

    content: str | None = None
    tool_calls: tuple[ToolCallRequest, ...] = ()
    finish_reason: FinishReason = "stop"
    usage: Usage = Usage()
    model: str = ""
    provider: str = ""
    raw_id: str | None = None

    def to_message(self) -> Message:
        """This response as the assistant turn to append to the conversation."""
        return Message.assistant(self.content, tool_calls=self.tool_calls)

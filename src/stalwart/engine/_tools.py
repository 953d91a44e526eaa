"""Tools: side-effecting functions a model may call, with validated arguments.

``@app.tool`` wraps a sync or async function. Its parameters become a pydantic model
(validation, and the JSON schema exported in the OpenAI and Anthropic tool formats); a
parameter annotated :class:`ToolCall` is not part of the schema but receives the call's
identity, whose ``idempotency_key`` is the same on every retry and after a crash, so the
service behind the tool can deduplicate the effect.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, ParamSpec, TypeVar, final, get_args, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from ..errors import ConfigurationError, ToolArgumentsError
from ..models import Origin, ToolSpec
from ._policy import INHERIT, Policy, _Inherit
from ._schema import schema_validator

__all__ = ["Effect", "Tool", "ToolCall", "ToolArgumentsError"]

P = ParamSpec("P")
R = TypeVar("R")

Effect = Literal["read", "write", "privileged"]
"""What calling a tool can do, declared by the tool (least privilege, docs/tools.md):

* ``read``: looks, changes nothing (a search, a file read, a SELECT);
* ``write``: changes something the agent's task owns (a draft, a note, a row);
* ``privileged``: an effect that needs trust: money, mail to outsiders, deleting,
  running commands, changing permissions. An agent refuses it (or asks for approval)
  while untrusted content is in its context.
"""
EFFECTS: tuple[Effect, ...] = get_args(Effect)


def _scopes(owner: str, scopes: Iterable[str]) -> frozenset[str]:
    if isinstance(scopes, str):
        raise ConfigurationError(f"{owner}: scopes must be a collection of strings, "
                                 f"not the string {scopes!r}")
    out = frozenset(scopes)
    bad = sorted(repr(s) for s in out if not isinstance(s, str) or not s.strip()
                 or any(c.isspace() for c in s))
    if bad:
        raise ConfigurationError(f"{owner}: a scope is a non-empty string without "
                                 f"spaces, not {', '.join(bad)}")
    return out


@final
@dataclass(frozen=True, slots=True)
class ToolCall:
    """The identity of one tool call, handed to a tool that declares a ToolCall parameter.

    Attributes:
        run_id, step_id: where the call is journaled.
        tool: the tool's name.
        attempt: 1 for the first attempt, 2 for the first retry, ...
        tool_call_id: the model's id for the call, when a model asked for it.
        fencing_token: the run's lease token for this execution (see
            :attr:`StepInfo.fencing_token <stalwart.StepInfo>`): send it with the
            effect so the service can refuse one from an execution that was taken over.
    """

    run_id: str
    step_id: str
    tool: str
    attempt: int
    tool_call_id: str | None = None
    fencing_token: int = 0

    @property
    def idempotency_key(self) -> str:
        """``"{run_id}:{step_id}"``: identical on every retry and after resume."""
        return f"{self.run_id}:{self.step_id}"


def _limit(owner: str, label: str, value: int | _Inherit) -> int | _Inherit:
    """A positive int limit on arguments, or INHERIT."""
    if value is INHERIT:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{owner!r}: {label} must be a positive int, not {value!r}")
    return value


@final
class Tool(Generic[P, R]):
    """A registered tool. Call it from a workflow with ``ctx.tool(tool, **arguments)``;
    give it to an :class:`~stalwart.Agent` to let a model call it.

    ``max_argument_bytes`` and ``max_argument_depth`` cap the arguments a model may send
    it (size of the JSON text, nesting depth); calls over them go back to the model as
    ``invalid_json``. Default: the agent's limits.

    ``effect`` (:data:`Effect`: ``"read"``, ``"write"`` or ``"privileged"``; default
    ``"write"``, since a tool that declares nothing may change something) and ``scopes``
    (strings such as ``"email:send"``) declare what the tool may do; an agent's
    :class:`~stalwart.Grant` allows calls by them, and an agent with untrusted content in
    its context refuses a ``privileged`` one (see :class:`~stalwart.Trust`).

    ``parameters``: a JSON schema for the arguments, for a tool described elsewhere (an
    MCP server's): the model is shown it and arguments are validated against it with
    ``jsonschema`` (:class:`~stalwart.ToolSchemaError` when it is not valid JSON
    Schema); ``fn`` then takes the arguments as one dict parameter (and optionally a
    :class:`ToolCall` one).
    """

    def __init__(self, fn: Callable[P, R], *, name: str | None = None,
                 description: str | None = None, policy: Policy | None = None,
                 max_argument_bytes: int | _Inherit = INHERIT,
                 max_argument_depth: int | _Inherit = INHERIT,
                 effect: Effect = "write", scopes: Iterable[str] = (),
                 parameters: Mapping[str, Any] | None = None) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        if effect not in EFFECTS:
            raise ConfigurationError(f"tool {self.name!r}: effect must be one of "
                                     f"{', '.join(EFFECTS)}, not {effect!r}")
        self.effect: Effect = effect
        self.scopes: frozenset[str] = _scopes(f"tool {self.name!r}", scopes)
        self.origin: Origin = Origin.tool(self.name)
        """The origin of this tool's output in an agent's context (an MCP tool's is
        ``Origin.mcp(server, tool)``)."""
        self.description_origin: Origin = Origin.developer()
        """Who wrote this tool's description and schema, which the model reads too: the
        developer for a local tool; the server for an MCP tool (so a poisoned
        description taints the context like a poisoned result)."""
        self.description = description or inspect.getdoc(fn) or ""
        self.policy = policy
        self.max_argument_bytes = _limit(self.name, "max_argument_bytes", max_argument_bytes)
        self.max_argument_depth = _limit(self.name, "max_argument_depth", max_argument_depth)
        self.is_async = inspect.iscoroutinefunction(fn)
        try:
            hints = get_type_hints(fn)
        except Exception as exc:
            raise ConfigurationError(f"tool {self.name!r}: cannot read annotations: {exc}") \
                from exc
        self.return_type: Any = hints.get("return", Any)
        self.call_param: str | None = None
        self.arguments_param: str | None = None
        """With ``parameters=``: the parameter that receives the arguments as one dict."""
        self._schema_validator: Any = None
        if parameters is not None:
            self._init_from_schema(fn, hints, parameters)
            return
        fields: dict[str, Any] = {}
        for pname, param in inspect.signature(fn).parameters.items():
            tp = hints.get(pname, Any)
            if tp is ToolCall:
                self.call_param = pname
                continue
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                raise ConfigurationError(
                    f"tool {self.name!r}: *args/**kwargs cannot be described to a model")
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[pname] = (tp, default)
        try:  # a parameter type pydantic cannot describe fails here, or in the schema
            self.args_model: type[BaseModel] = create_model(
                f"{self.name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
            self.spec = ToolSpec(name=self.name, description=self.description,
                                 parameters=self.args_model.model_json_schema())
        except Exception as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigurationError(
                f"tool {self.name!r}: its parameters cannot be described to a model: "
                f"{detail}") from exc

    def _init_from_schema(self, fn: Callable[..., Any], hints: dict[str, Any],
                          parameters: Mapping[str, Any]) -> None:
        """A tool described by a JSON schema rather than by its signature (a tool from
        elsewhere: an MCP server). ``fn`` takes the arguments as one dict parameter (and
        optionally a :class:`ToolCall` one); they are validated with ``jsonschema``."""
        self._schema_validator = schema_validator(self.name, parameters)
        for pname in inspect.signature(fn).parameters:
            if hints.get(pname) is ToolCall:
                self.call_param = pname
            elif self.arguments_param is None:
                self.arguments_param = pname
            else:
                raise ConfigurationError(
                    f"tool {self.name!r}: with parameters=, the function takes one "
                    f"parameter for the arguments (and optionally a ToolCall), not {pname!r}")
        if self.arguments_param is None:
            raise ConfigurationError(f"tool {self.name!r}: with parameters=, the function "
                                     "needs a parameter for the arguments")
        self.args_model = create_model(f"{self.name}_arguments")  # unused: no signature
        self.spec = ToolSpec(name=self.name, description=self.description,
                             parameters=dict(parameters))

    def __repr__(self) -> str:
        return f"<Tool {self.name}>"

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Validated keyword arguments (types coerced as pydantic does).

        Raises:
            ToolArgumentsError: unknown, missing or ill-typed arguments.
        """
        if self._schema_validator is not None:
            return self._schema_validator(arguments)  # type: ignore[no-any-return]
        try:
            model = self.args_model.model_validate(arguments)
        except ValidationError as exc:
            errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                      for e in exc.errors()]
            raise ToolArgumentsError(self.name, errors) from None
        return {k: getattr(model, k) for k in type(model).model_fields}

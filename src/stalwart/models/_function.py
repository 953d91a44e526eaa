"""A model whose answers you write: a function of each request.

The anchor is Pydantic AI's ``FunctionModel``. The function receives the whole
:class:`ModelRequest` (the conversation as :class:`Message` objects, the
:class:`ToolSpec` of each tool offered, the options, the output schema) and returns the
reply: text, tool calls, a structured value, or a full :class:`ModelResponse` (see
:data:`~stalwart.models.ScriptedReply`). It may be ``async``, and it may raise a
:class:`~stalwart.errors.ModelError` (``RateLimitedError``, ``ProviderOverloadedError``
...) to exercise the policy stack. Runs on it cost nothing (``function:*`` is priced at
$0).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import final

from stalwart.errors import ConfigurationError

from ._replies import ScriptedReply, as_response
from ._types import ModelRequest, ModelResponse

__all__ = ["FunctionModel", "ModelFunction"]

ModelFunction = Callable[[ModelRequest], ScriptedReply | Awaitable[ScriptedReply]]
"""The function behind a :class:`FunctionModel`: a request in, a reply out."""


@final
class FunctionModel:
    """A :class:`~stalwart.models.Model` that answers with ``function(request)``.

    Args:
        function: called once per model call with the :class:`ModelRequest`; returns
            (or, when async, resolves to) a :data:`~stalwart.models.ScriptedReply`.
        name: the model's name in the journal, costs and traces (default: the
            function's ``__name__``); its spec key is ``function:NAME``.

    Example::

        def weather_bot(request: sw.ModelRequest) -> sw.models.ScriptedReply:
            if not any(m.role == "tool" for m in request.messages):
                return sw.ToolCallRequest.create("c1", "get_weather", {"city": "Oslo"})
            return Forecast(city="Oslo", summary=request.messages[-1].content or "")

        agent = sw.Agent("forecaster", sw.FunctionModel(weather_bot), ...)
    """

    provider = "function"

    def __init__(self, function: ModelFunction, *, name: str | None = None) -> None:
        if not callable(function):
            raise ConfigurationError(
                f"FunctionModel needs a callable, not {type(function).__name__}")
        label = name or getattr(function, "__name__", None) or "function"
        if label == "<lambda>":
            label = "lambda"
        self.name: str = label
        self.function = function
        self._requests: list[ModelRequest] = []

    def __repr__(self) -> str:
        return f"FunctionModel({self.name!r})"

    @property
    def requests(self) -> tuple[ModelRequest, ...]:
        """Every request received, in order."""
        return tuple(self._requests)

    @property
    def last_request(self) -> ModelRequest | None:
        """The most recent request, or ``None`` before the first call."""
        return self._requests[-1] if self._requests else None

    async def aclose(self) -> None:
        """Nothing to release; present so every adapter can be closed the same way."""

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Call the function and turn its reply into a :class:`ModelResponse`.

        Exceptions the function raises propagate: a :class:`~stalwart.errors.ModelError`
        is handled by the policies like a provider's, anything else is a bug.
        """
        self._requests.append(request)
        item = self.function(request)
        if inspect.isawaitable(item):
            item = await item
        return as_response(item, request, model=self.name, provider=self.provider,
                           raw_id=f"function-{len(self._requests)}")

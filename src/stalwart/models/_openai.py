"""The OpenAI Chat Completions adapter.

It exists to keep three promises the SDK does not: the SDK's own retries are off
(stalwart's Retry policy retries, with the journal and the breaker in the loop, and two
retry loops would multiply), every failure leaves as exactly one stalwart
:class:`~stalwart.errors.ModelError` subclass, and the result is a provider-neutral
:class:`ModelResponse` the engine can journal. It works against any OpenAI-compatible
server through ``base_url`` (vLLM, Ollama, Azure's v1 endpoint, the test FaultServer).
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, final

import openai

from stalwart._clock import Clock, SystemClock
from stalwart.errors import (
    ConfigurationError,
    ContentFilterError,
    MalformedResponseError,
    ModelConnectionError,
    ModelError,
    ModelTimeoutError,
    _ProviderError,
)

from ._failures import error_for_status, parse_quota, parse_retry_after
from ._types import FinishReason, Message, ModelRequest, ModelResponse, ToolCallRequest, Usage

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion

__all__ = ["OpenAIModel"]

_FINISH: dict[str, FinishReason] = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls",
    "function_call": "tool_calls", "content_filter": "content_filter",
}


@final
class OpenAIModel:
    """A model served by the OpenAI Chat Completions API (or a compatible server).

    Args:
        name: the model, e.g. ``gpt-4o-mini``.
        api_key: defaults to ``OPENAI_API_KEY``. With a ``base_url`` it may be absent:
            a local OpenAI-compatible server (vLLM, Ollama, llama.cpp) is then sent no
            ``Authorization`` header at all.
        base_url: defaults to ``OPENAI_BASE_URL``, then the SDK's default.
        timeout: seconds for the whole HTTP exchange; ``None`` disables it (leave
            deadlines to stalwart's Timeout policy).
        max_tokens_param: the request field for ``options.max_tokens``; some compatible
            servers only know the older ``max_tokens``.
        clock: turns an HTTP-date ``Retry-After`` into seconds.
        client: an ``AsyncOpenAI`` to use instead (its retries are switched off on a
            copy; it is not closed by :meth:`aclose`).

    Raises:
        ConfigurationError: no API key was given or found in the environment, and no
            ``base_url`` either (OpenAI's own API needs one).
    """

    provider = "openai"

    def __init__(
        self,
        name: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | None = 60.0,
        max_tokens_param: Literal["max_completion_tokens", "max_tokens"] = (
            "max_completion_tokens"),
        clock: Clock | None = None,
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        if not name:
            raise ConfigurationError("an OpenAI model needs a name")
        self.name = name
        self._clock = clock or SystemClock()
        self._max_tokens_param = max_tokens_param
        self._owns_client = client is None
        self._headers: dict[str, Any] = {}
        if client is not None:
            self._client = client.with_options(max_retries=0, timeout=timeout)
            return
        key = api_key or os.environ.get("OPENAI_API_KEY")
        url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if not key and url is None:
            raise ConfigurationError(
                f"openai:{name} needs an API key: pass api_key= or set OPENAI_API_KEY "
                "(a local OpenAI-compatible server needs none: pass base_url=)")
        if not key:
            # The SDK insists on a key; the header it would make is removed per request,
            # so a keyless server sees no Authorization at all.
            self._headers = {"Authorization": openai.Omit()}
        self._client = openai.AsyncOpenAI(
            api_key=key or "no-key",
            base_url=url,
            timeout=timeout,
            max_retries=0,
        )

    def __repr__(self) -> str:
        return f"OpenAIModel({self.name!r}, base_url={str(self._client.base_url)!r})"

    async def aclose(self) -> None:
        """Close the HTTP connection pool (when this model created it)."""
        if self._owns_client:
            await self._client.close()

    async def __aenter__(self) -> OpenAIModel:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """One chat completion; raises only :class:`~stalwart.errors.ModelError`."""
        kwargs = self._request_body(request)
        if self._headers:
            kwargs["extra_headers"] = self._headers
        try:
            completion: ChatCompletion = await self._client.chat.completions.create(**kwargs)
        except openai.APIError as exc:
            raise self._map_error(exc) from exc
        except openai.OpenAIError as exc:  # raised by the SDK outside any HTTP exchange
            raise self._error(ModelConnectionError, f"OpenAI SDK error: {exc}") from exc
        except (ValueError, TypeError, RecursionError) as exc:  # a body that is not JSON
            raise self._error(MalformedResponseError,
                              f"unreadable response body: {exc}") from exc
        try:
            return self._parse(completion)
        except ModelError:
            raise
        except (AttributeError, TypeError, ValueError, KeyError, IndexError,
                RecursionError) as exc:
            raise self._error(MalformedResponseError,
                              f"response lacks required fields: {exc}") from exc

    # -- request ------------------------------------------------------------------------

    def _request_body(self, request: ModelRequest) -> dict[str, Any]:
        opts = request.options
        body: dict[str, Any] = {
            "model": self.name,
            "messages": [_message_to_openai(m) for m in request.messages],
        }
        if request.tools:
            body["tools"] = [t.to_openai() for t in request.tools]
            if opts.tool_choice is not None:
                body["tool_choice"] = opts.tool_choice
        if opts.temperature is not None:
            body["temperature"] = opts.temperature
        if opts.top_p is not None:
            body["top_p"] = opts.top_p
        if opts.max_tokens is not None:
            body[self._max_tokens_param] = opts.max_tokens
        if opts.stop:
            body["stop"] = list(opts.stop)
        if opts.seed is not None:
            body["seed"] = opts.seed
        return body

    # -- response -----------------------------------------------------------------------

    def _parse(self, completion: ChatCompletion) -> ModelResponse:
        if not completion.choices:
            raise self._error(MalformedResponseError, "response has no choices")
        choice = completion.choices[0]
        message = choice.message
        if message is None:
            raise self._error(MalformedResponseError, "response choice has no message")
        finish = _FINISH.get(str(choice.finish_reason), "other")
        if finish == "content_filter" or (message.refusal and not message.content):
            raise self._error(ContentFilterError,
                              f"the provider filtered the reply: {message.refusal or ''}")
        calls = []
        for call in message.tool_calls or ():
            function = getattr(call, "function", None)  # custom (non-function) tools: skip
            if function is None:
                continue
            calls.append(ToolCallRequest(id=call.id, name=function.name,
                                         arguments=function.arguments or ""))
        usage = completion.usage
        return ModelResponse(
            content=message.content,
            tool_calls=tuple(calls),
            finish_reason=finish,
            usage=Usage(input_tokens=usage.prompt_tokens or 0,
                        output_tokens=usage.completion_tokens or 0) if usage else Usage(),
            model=completion.model or self.name,
            provider=self.provider,
            raw_id=completion.id,
        )

    # -- errors -------------------------------------------------------------------------

    def _map_error(self, exc: openai.APIError) -> ModelError:
        if isinstance(exc, openai.APITimeoutError):
            return self._error(ModelTimeoutError, f"no answer in time: {exc.message}")
        if isinstance(exc, openai.APIConnectionError):
            return self._error(ModelConnectionError, f"connection failed: {exc.message}")
        if isinstance(exc, openai.APIStatusError):
            headers = dict(exc.response.headers.items())
            return error_for_status(
                exc.status_code, exc.message, provider=self.provider, model=self.name,
                retry_after=parse_retry_after(headers, self._clock.now()), code=exc.code,
                quota=parse_quota(headers, self._clock.now()))
        # APIResponseValidationError and any other APIError: the body was not a completion
        return self._error(MalformedResponseError, f"invalid response: {exc.message}")

    def _error(self, cls: type[_ProviderError], message: str) -> ModelError:
        return cls(f"openai:{self.name}: {message}", provider=self.provider,
                   model=self.name)


def _message_to_openai(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id,
                "content": message.content or ""}
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.role != "assistant" and out["content"] is None:
        out["content"] = ""
    if message.name and message.role in ("user", "system"):
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls]
    return out

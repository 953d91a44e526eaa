"""The Anthropic Messages adapter.

Same promises as the OpenAI adapter (SDK retries off, one stalwart error per failure, a
neutral :class:`ModelResponse`), plus the translation the Messages API needs: system
messages go to the top-level ``system`` field, assistant tool calls become ``tool_use``
blocks, tool results become ``tool_result`` blocks inside a *user* turn, and adjacent
turns of the same role are merged because the API requires alternation. A
``529 overloaded`` answer is a :class:`~stalwart.errors.ProviderOverloadedError`.
"""

from __future__ import annotations

import json
import os
from types import TracebackType
from typing import TYPE_CHECKING, Any, final

import anthropic

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
    from anthropic.types import Message as AnthropicMessage

__all__ = ["AnthropicModel"]

_STOP: dict[str, FinishReason] = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}


@final
class AnthropicModel:
    """A model served by the Anthropic Messages API.

    Args:
        name: the model, e.g. ``claude-sonnet-4-5``.
        api_key: defaults to ``ANTHROPIC_API_KEY``. With a ``base_url`` it may be
            absent: the server is then sent no key header at all.
        base_url: defaults to ``ANTHROPIC_BASE_URL``, then the SDK's default.
        timeout: seconds for the whole HTTP exchange; ``None`` disables it.
        default_max_tokens: sent when ``options.max_tokens`` is unset (the API
            requires a value).
        clock: turns an HTTP-date ``Retry-After`` into seconds.
        client: an ``AsyncAnthropic`` to use instead (its retries are switched off on a
            copy; it is not closed by :meth:`aclose`).

    Raises:
        ConfigurationError: no API key was given or found in the environment, and no
            ``base_url`` either.
    """

    provider = "anthropic"

    def __init__(
        self,
        name: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | None = 60.0,
        default_max_tokens: int = 4096,
        clock: Clock | None = None,
        client: anthropic.AsyncAnthropic | None = None,
    ) -> None:
        if not name:
            raise ConfigurationError("an Anthropic model needs a name")
        if default_max_tokens <= 0:
            raise ConfigurationError("default_max_tokens must be positive")
        self.name = name
        self._clock = clock or SystemClock()
        self._default_max_tokens = default_max_tokens
        self._owns_client = client is None
        self._headers: dict[str, Any] = {}
        if client is not None:
            self._client = client.with_options(max_retries=0, timeout=timeout)
            return
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        if not key and url is None:
            raise ConfigurationError(
                f"anthropic:{name} needs an API key: pass api_key= or set ANTHROPIC_API_KEY "
                "(a local Messages-compatible server needs none: pass base_url=)")
        if not key:
            # As for OpenAI: the SDK insists on a key; the header it would make (SDK
            # versions differ on which) is removed per request.
            self._headers = {"X-Api-Key": anthropic.Omit(), "Authorization": anthropic.Omit()}
        self._client = anthropic.AsyncAnthropic(
            api_key=key or "no-key",
            base_url=url,
            timeout=timeout,
            max_retries=0,
        )

    def __repr__(self) -> str:
        return f"AnthropicModel({self.name!r}, base_url={str(self._client.base_url)!r})"

    async def aclose(self) -> None:
        """Close the HTTP connection pool (when this model created it)."""
        if self._owns_client:
            await self._client.close()

    async def __aenter__(self) -> AnthropicModel:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """One message; raises only :class:`~stalwart.errors.ModelError`."""
        kwargs = self._request_body(request)
        if self._headers:
            kwargs["extra_headers"] = self._headers
        try:
            message: AnthropicMessage = await self._client.messages.create(**kwargs)
        except anthropic.APIError as exc:
            raise self._map_error(exc) from exc
        except anthropic.AnthropicError as exc:  # raised outside any HTTP exchange
            raise self._error(ModelConnectionError, f"Anthropic SDK error: {exc}") from exc
        except (ValueError, TypeError, RecursionError) as exc:  # a body that is not JSON
            raise self._error(MalformedResponseError,
                              f"unreadable response body: {exc}") from exc
        try:
            return self._parse(message)
        except ModelError:
            raise
        except (AttributeError, TypeError, ValueError, KeyError, IndexError,
                RecursionError) as exc:
            raise self._error(MalformedResponseError,
                              f"response lacks required fields: {exc}") from exc

    # -- request ------------------------------------------------------------------------

    def _request_body(self, request: ModelRequest) -> dict[str, Any]:
        opts = request.options
        system = [m.content for m in request.messages if m.role == "system" and m.content]
        body: dict[str, Any] = {
            "model": self.name,
            "max_tokens": opts.max_tokens or self._default_max_tokens,
            "messages": _messages_to_anthropic(request.messages),
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.tools and opts.tool_choice != "none":
            body["tools"] = [t.to_anthropic() for t in request.tools]
            if opts.tool_choice == "required":
                body["tool_choice"] = {"type": "any"}
            elif opts.tool_choice == "auto":
                body["tool_choice"] = {"type": "auto"}
        if opts.stop:
            body["stop_sequences"] = list(opts.stop)
        # Sampling knobs are not in every SDK version's signature; the API accepts them.
        extra = {k: v for k, v in (("temperature", opts.temperature), ("top_p", opts.top_p))
                 if v is not None}
        if extra:
            body["extra_body"] = extra
        return body

    # -- response -----------------------------------------------------------------------

    def _parse(self, message: AnthropicMessage) -> ModelResponse:
        if message.content is None or message.stop_reason is None:
            raise self._error(MalformedResponseError, "response lacks content or stop_reason")
        finish = _STOP.get(str(message.stop_reason), "other")
        if finish == "content_filter":
            raise self._error(ContentFilterError, "the model refused to answer")
        texts: list[str] = []
        calls: list[ToolCallRequest] = []
        for block in message.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                calls.append(ToolCallRequest(
                    id=block.id, name=block.name,
                    arguments=json.dumps(block.input, separators=(",", ":"))))
        usage = message.usage
        return ModelResponse(
            content="".join(texts) if texts else None,
            tool_calls=tuple(calls),
            finish_reason=finish,
            usage=Usage(input_tokens=usage.input_tokens or 0,
                        output_tokens=usage.output_tokens or 0) if usage else Usage(),
            model=message.model or self.name,
            provider=self.provider,
            raw_id=message.id,
        )

    # -- errors -------------------------------------------------------------------------

    def _map_error(self, exc: anthropic.APIError) -> ModelError:
        if isinstance(exc, anthropic.APITimeoutError):
            return self._error(ModelTimeoutError, f"no answer in time: {exc.message}")
        if isinstance(exc, anthropic.APIConnectionError):
            return self._error(ModelConnectionError, f"connection failed: {exc.message}")
        if isinstance(exc, anthropic.APIStatusError):
            headers = dict(exc.response.headers.items())
            return error_for_status(
                exc.status_code, _status_message(exc), provider=self.provider,
                model=self.name, retry_after=parse_retry_after(headers, self._clock.now()),
                quota=parse_quota(headers, self._clock.now()))
        return self._error(MalformedResponseError, f"invalid response: {exc.message}")

    def _error(self, cls: type[_ProviderError], message: str) -> ModelError:
        return cls(f"anthropic:{self.name}: {message}", provider=self.provider,
                   model=self.name)


def _status_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return f"{error.get('type', 'error')}: {error['message']}"
    return exc.message


def _messages_to_anthropic(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """Convert the non-system turns, merging adjacent turns of the same role."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [{"type": "tool_result", "tool_use_id": message.tool_call_id,
                 "content": message.content or ""}]
    blocks: list[dict[str, Any]] = []
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        # Unparseable arguments cannot be sent as a tool_use input; an empty object
        # keeps the conversation valid and the tool_result explains the problem.
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name,
                       "input": call.parsed or {}})
    return blocks

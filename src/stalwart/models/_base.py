"""The one interface the rest of stalwart uses to call a language model.

Agents and the policy stack only ever see :class:`Model`: something with a provider, a
name and an async ``complete``. Adapters for real providers and the offline simulator
implement it, and :func:`parse_model` turns the strings users write
(``"openai:gpt-4o-mini"``, ``"sim:demo"``) into one, importing a provider's SDK only
when that provider is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from stalwart.errors import ConfigurationError

from ._simulated import SimulatedModel
from ._types import ModelRequest, ModelResponse

__all__ = ["PROVIDERS", "Model", "parse_model"]


@runtime_checkable
class Model(Protocol):
    """A language model stalwart can call.

    ``complete`` must either return a :class:`ModelResponse` or raise a
    :class:`~stalwart.errors.ModelError` subclass whose ``retryable`` and ``retry_after``
    tell the policy stack what to do; any other exception is treated as a bug.
    Adapters that own connections also offer ``aclose()``.
    """

    @property
    def provider(self) -> str:
        """``openai``, ``anthropic``, ``sim``..."""
        ...

    @property
    def name(self) -> str:
        """The provider's model name, e.g. ``gpt-4o-mini``."""
        ...

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Run one completion."""
        ...


PROVIDERS = ("openai", "anthropic", "sim")


def parse_model(spec: str | Model, /, **kwargs: Any) -> Model:
    """Resolve ``"provider:name"`` (or an existing model) to a :class:`Model`.

    Keyword arguments go to the adapter's constructor (``api_key=``, ``base_url=``,
    ``timeout=``, ``seed=``, ``faults=``...). A ``sim:`` spec takes options after its
    name: ``sim:NAME?tools=a,b`` calls only those tools, ``?tools=`` none,
    ``?seed=N`` seeds it.

    Raises:
        ConfigurationError: unknown provider prefix, empty name, an option the adapter
            does not take, a missing API key, or options given with a ready instance.
    """
    if not isinstance(spec, str):
        if not isinstance(spec, Model):
            raise ConfigurationError(
                f"expected 'provider:name' or a Model, got {type(spec).__name__}")
        if kwargs:
            raise ConfigurationError(
                f"options {sorted(kwargs)} cannot be applied to a ready model instance")
        return spec
    provider, sep, name = spec.partition(":")
    if not sep or not name:
        raise ConfigurationError(
            f"model {spec!r} must look like 'provider:name'; providers: {', '.join(PROVIDERS)}")
    factory = _factory(provider)
    if factory is None:
        raise ConfigurationError(
            f"unknown model provider {provider!r} in {spec!r}; known: {', '.join(PROVIDERS)}")
    try:
        return factory(name, **kwargs)
    except TypeError as exc:  # an option this adapter does not take
        raise ConfigurationError(f"bad options for {spec!r}: {exc}") from exc


def _factory(provider: str) -> Callable[..., Model] | None:
    if provider == "openai":
        from ._openai import OpenAIModel

        return OpenAIModel
    if provider == "anthropic":
        from ._anthropic import AnthropicModel

        return AnthropicModel
    if provider == "sim":
        return SimulatedModel.from_spec  # NAME?tools=a,b&seed=N
    return None

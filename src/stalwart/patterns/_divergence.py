"""How much a set of answers disagrees: one number in [0, 1], 0 when all agree.

* **Structured answers** (pydantic models, mappings): the share of fields on which the
  answers disagree. The fields are the union of the answers' top-level fields; a field
  is disagreed on when its values (compared as canonical JSON) are not all the same, a
  field missing from an answer counting as a value of its own. Three answers
  ``{"city": "Oslo", "year": 2024}``, ``{"city": "Oslo", "year": 2023}`` and
  ``{"city": "Oslo", "year": 2024}`` disagree on 1 field of 2: divergence 0.5.
* **Text**: the mean, over every pair of answers, of the normalised token-set distance
  (the Jaccard distance of their sets of lower-cased word tokens, ``\\w+``):
  1 - (tokens in both) / (tokens in either); two empty texts are at distance 0. Word
  order and repetition do not count; a paraphrase with other words does.
* **Anything else** (numbers, lists, booleans, mixed kinds): the share of answers that
  differ from the most common one (canonical JSON), so 0 when all agree and
  ``(n - 1) / n`` when all differ.

Fewer than two answers have nothing to disagree with: 0.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

from pydantic import BaseModel

from ._members import canonical, to_json

__all__ = ["divergence", "token_distance"]

_TOKEN = re.compile(r"\w+")


def token_distance(a: str, b: str) -> float:
    """The Jaccard distance of two texts' sets of lower-cased word tokens."""
    x, y = set(_TOKEN.findall(a.lower())), set(_TOKEN.findall(b.lower()))
    union = x | y
    if not union:
        return 0.0
    return 1.0 - len(x & y) / len(union)


def divergence(answers: Sequence[Any]) -> float:
    """The divergence of ``answers`` (see the module docstring)."""
    if len(answers) < 2:
        return 0.0
    if all(isinstance(a, str) for a in answers):
        pairs = list(combinations(answers, 2))
        return sum(token_distance(a, b) for a, b in pairs) / len(pairs)
    if all(isinstance(a, BaseModel | Mapping) for a in answers):
        return _field_divergence([to_json(a) for a in answers])
    counts = Counter(canonical(a) for a in answers)
    return 1.0 - counts.most_common(1)[0][1] / len(answers)


_ABSENT = "\x00absent"


def _field_divergence(rows: list[dict[str, Any]]) -> float:
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    if not fields:
        return 0.0
    split = sum(1 for f in fields
                if len({canonical(r[f]) if f in r else _ABSENT for r in rows}) > 1)
    return split / len(fields)

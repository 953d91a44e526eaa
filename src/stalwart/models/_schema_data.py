"""A small, readable value that fits a JSON schema: tool arguments and typed answers for
the offline simulator.

``SimulatedModel`` calls an agent's tools with arguments made from each tool's JSON
schema, and answers an agent's ``output_type`` with a value made from its schema, the
way Pydantic AI's ``TestModel`` does. Why our own code: the libraries that draw values
from a schema (``hypothesis-jsonschema``) draw random, often unreadable ones through
hypothesis's engine, which does not belong in a runtime dependency; what is wanted here
is the *smallest* readable value (required fields only, one list item, a word for a
string), the same for the same seed, for the schemas pydantic writes.

What is covered: ``$ref``/``$defs``, ``allOf`` (merged), ``anyOf``/``oneOf`` (a
non-null branch first), ``const``, ``enum``, ``examples``, objects (required
properties; ``additionalProperties`` for a dict; ``minProperties``), arrays (``items``,
``prefixItems``, ``minItems``/``maxItems``, ``uniqueItems``), strings (``minLength``,
``maxLength``, ``pattern`` from a few candidates, and the formats pydantic uses:
``date``, ``date-time``, ``time``, ``duration``, ``uuid``, ``email``, ``uri``,
``ipv4``, ``ipv6``, ``hostname``...), integers and numbers (``minimum``, ``maximum``,
exclusive bounds, ``multipleOf``), booleans and null. A schema it cannot satisfy (a
``pattern`` none of its candidates match, contradictory bounds) raises
:class:`~stalwart.errors.ConfigurationError` naming the path, rather than handing the
agent a value that fails validation.
"""

from __future__ import annotations

import math
import random
import re
import uuid
from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

from stalwart.errors import ConfigurationError

__all__ = ["sample_json"]

_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
          "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa")

_MAX_DEPTH = 8
"""Past this nesting (a recursive model), lists stay as short and objects as small as
their schema allows."""


def sample_json(schema: Mapping[str, Any] | bool, rng: random.Random) -> Any:
    """A JSON value that fits ``schema``, drawn from ``rng`` (the same draws, the same
    value).

    Raises:
        ConfigurationError: the schema asks for something this generator cannot make.
    """
    root = schema if isinstance(schema, Mapping) else {}
    return _Sampler(root, rng).value(schema, "$", 0)


class _Sampler:
    def __init__(self, root: Mapping[str, Any], rng: random.Random) -> None:
        self.defs: dict[str, Any] = {**root.get("definitions", {}), **root.get("$defs", {})}
        self.rng = rng

    # -- dispatch ---------------------------------------------------------------------

    def value(self, schema: Mapping[str, Any] | bool, path: str, depth: int) -> Any:
        if schema is True or schema == {}:
            return self.word()
        if schema is False:
            raise ConfigurationError(f"the schema at {path} accepts no value")
        assert isinstance(schema, Mapping)
        schema = self.resolve(schema, path)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self.rng.choice(list(schema["enum"]))
        if isinstance(schema.get("examples"), list) and schema["examples"]:
            return self.rng.choice(schema["examples"])
        branches = schema.get("anyOf") or schema.get("oneOf")
        if branches:
            return self.value(self.branch(branches), path, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"] or ["null"]
            kind = kinds[0]
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                return self.word()
        make = {"object": self.obj, "array": self.array, "string": self.string,
                "integer": self.integer, "number": self.number}.get(kind)
        if make is not None:
            return make(schema, path, depth)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        raise ConfigurationError(f"the schema at {path} has an unknown type {kind!r}")

    def resolve(self, schema: Mapping[str, Any], path: str) -> Mapping[str, Any]:
        """Follow ``$ref`` and merge ``allOf``, so the rest sees one plain schema."""
        for _ in range(64):
            ref = schema.get("$ref")
            if ref is not None:
                name = str(ref).rsplit("/", 1)[-1]
                if name not in self.defs:
                    raise ConfigurationError(f"the schema at {path} refers to {ref!r}, "
                                             "which it does not define")
                rest = {k: v for k, v in schema.items() if k != "$ref"}
                schema = {**self.defs[name], **rest}
                continue
            parts = schema.get("allOf")
            if parts:
                merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
                for part in parts:
                    merged = _merge(merged, self.resolve(part, path))
                schema = merged
                continue
            return schema
        raise ConfigurationError(f"the schema at {path} refers to itself without end")

    def branch(self, branches: list[Any]) -> Any:
        # A null branch only when nothing else is there: None says little in a test.
        real = [b for b in branches if not (isinstance(b, Mapping) and b.get("type") == "null")]
        return self.rng.choice(real or branches)

    # -- kinds ------------------------------------------------------------------------

    def obj(self, schema: Mapping[str, Any], path: str, depth: int) -> dict[str, Any]:
        props: Mapping[str, Any] = schema.get("properties") or {}
        required = [k for k in props if k in set(schema.get("required", ()))]
        required += [k for k in schema.get("required", ()) if k not in props]
        wanted = int(schema.get("minProperties", 0))
        names = required + [k for k in props if k not in required][:max(0, wanted
                                                                         - len(required))]
        out = {name: self.value(props.get(name, True), f"{path}.{name}", depth + 1)
               for name in names}
        extra = schema.get("additionalProperties")
        if not props and isinstance(extra, Mapping) and depth < _MAX_DEPTH:
            wanted = max(wanted, 1)
        n = 0
        while len(out) < wanted and extra is not False:
            key = self.word() if n == 0 else f"{self.word()}_{n}"
            n += 1
            if key not in out:
                out[key] = self.value(extra if isinstance(extra, Mapping) else True,
                                      f"{path}.{key}", depth + 1)
        return out

    def array(self, schema: Mapping[str, Any], path: str, depth: int) -> list[Any]:
        prefix = list(schema.get("prefixItems") or ())
        items = schema.get("items", not prefix)
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        count = max(low, len(prefix) if prefix else (1 if depth < _MAX_DEPTH else 0))
        if high is not None:
            count = min(count, int(high))
        if count < low:
            raise ConfigurationError(f"the array at {path} needs {low} items but allows "
                                     f"{high}")
        out: list[Any] = []
        unique = bool(schema.get("uniqueItems"))
        for i in range(count):
            sub = prefix[i] if i < len(prefix) else items
            if sub is False:
                raise ConfigurationError(f"the array at {path} allows only {len(prefix)} "
                                         f"items but needs {count}")
            item = self.value(sub, f"{path}[{i}]", depth + 1)
            tries = 0
            while unique and item in out and tries < 32:
                item = self.value(sub, f"{path}[{i}]", depth + 1)
                tries += 1
            if unique and item in out:
                raise ConfigurationError(f"the array at {path} needs {count} distinct "
                                         "items; its item schema gives too few")
            out.append(item)
        return out

    def string(self, schema: Mapping[str, Any], path: str, depth: int) -> str:
        fmt = schema.get("format")
        candidates = [self.formatted(fmt)] if fmt in _FORMATS else []
        candidates += [self.word(), "a", "0", "1", "A", "a1", "2024-01-01", "x" * 8]
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        pattern = schema.get("pattern")
        regex = re.compile(pattern) if isinstance(pattern, str) else None
        for text in candidates:
            if len(text) < low and fmt not in _FORMATS:
                text = (text * (low // max(1, len(text)) + 1))[:low]
            if high is not None and len(text) > int(high) and fmt not in _FORMATS:
                text = text[:int(high)]
            if len(text) < low or (high is not None and len(text) > int(high)):
                continue
            if regex is None or regex.search(text):
                return text
        raise ConfigurationError(
            f"cannot make a string for {path} that matches "
            + (f"pattern {pattern!r}" if regex else f"length {low}..{high}")
            + (f" and format {fmt!r}" if fmt else "")
            + "; script that reply (SimulatedModel(script=...) or FunctionModel)")

    def formatted(self, fmt: str) -> str:
        day = date(2024, 1, 1) + timedelta(days=self.rng.randrange(366))
        if fmt == "date":
            return day.isoformat()
        if fmt == "date-time":
            return f"{day.isoformat()}T{self.rng.randrange(24):02d}:00:00Z"
        if fmt == "time":
            return f"{self.rng.randrange(24):02d}:{self.rng.randrange(60):02d}:00"
        if fmt == "duration":
            return f"PT{self.rng.randrange(1, 60)}M"
        if fmt in ("uuid", "uuid1", "uuid3", "uuid4", "uuid5"):
            version = 4 if fmt == "uuid" else int(fmt[-1])
            return str(uuid.UUID(int=self.rng.getrandbits(128), version=version))
        if fmt in ("email", "idn-email"):
            return f"{self.word()}@example.com"
        if fmt in ("uri", "iri", "uri-reference", "iri-reference", "url"):
            return f"https://example.com/{self.word()}"
        if fmt == "ipv4":
            return f"192.0.2.{self.rng.randrange(1, 255)}"
        if fmt == "ipv6":
            return f"2001:db8::{self.rng.randrange(1, 0xffff):x}"
        if fmt in ("ipvanyaddress", "ipvanyinterface"):
            return f"192.0.2.{self.rng.randrange(1, 255)}"
        if fmt in ("ipv4network", "ipvanynetwork"):
            return "192.0.2.0/24"
        if fmt in ("hostname", "idn-hostname"):
            return f"{self.word()}.example.com"
        return self.word()  # binary, password, path, multi-host-uri...

    def integer(self, schema: Mapping[str, Any], path: str, depth: int) -> int:
        low, high = _bounds(schema, integer=True)
        step = schema.get("multipleOf")
        lo = math.ceil(low) if low is not None else (0 if high is None or high >= 0 else
                                                     math.floor(high) - 100)
        hi = math.floor(high) if high is not None else lo + 100
        if step:
            first = math.ceil(lo / step) * step
            if first > hi:
                raise ConfigurationError(f"no multiple of {step} lies within the bounds "
                                         f"at {path}")
            return int(first + step * self.rng.randrange(int((hi - first) // step) + 1))
        if lo > hi:
            raise ConfigurationError(f"the bounds of the integer at {path} are empty")
        return self.rng.randint(int(lo), int(hi))

    def number(self, schema: Mapping[str, Any], path: str, depth: int) -> float:
        if schema.get("multipleOf"):
            return float(self.integer(schema, path, depth))
        low, high = _bounds(schema, integer=False)
        lo = low if low is not None else (0.0 if high is None or high >= 0 else high - 100)
        hi = high if high is not None else lo + 100.0
        if lo > hi:
            raise ConfigurationError(f"the bounds of the number at {path} are empty")
        value = round(self.rng.uniform(lo, hi), 2)
        return value if lo <= value <= hi and _inside(value, schema) else (lo + hi) / 2

    def word(self) -> str:
        return self.rng.choice(_WORDS)


_FORMATS = frozenset({
    "date", "date-time", "time", "duration", "uuid", "uuid1", "uuid3", "uuid4", "uuid5",
    "email", "idn-email", "uri", "iri", "uri-reference", "iri-reference", "url", "ipv4",
    "ipv6", "ipvanyaddress", "ipvanyinterface", "ipv4network", "ipvanynetwork",
    "hostname", "idn-hostname"})


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if key == "properties" and key in out:
            out[key] = {**out[key], **value}
        elif key == "required" and key in out:
            out[key] = [*out[key], *(v for v in value if v not in out[key])]
        else:
            out.setdefault(key, value)
    return out


def _bounds(schema: Mapping[str, Any], *, integer: bool) -> tuple[float | None, float | None]:
    """The inclusive bounds (exclusive ones moved inwards by one, or a hair for floats)."""
    nudge = 1 if integer else 1e-6
    low = schema.get("minimum")
    if schema.get("exclusiveMinimum") is not None:
        low = max(low if low is not None else -math.inf, schema["exclusiveMinimum"] + nudge)
    high = schema.get("maximum")
    if schema.get("exclusiveMaximum") is not None:
        high = min(high if high is not None else math.inf, schema["exclusiveMaximum"] - nudge)
    return low, high


def _inside(value: float, schema: Mapping[str, Any]) -> bool:
    ex_lo, ex_hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    return (ex_lo is None or value > ex_lo) and (ex_hi is None or value < ex_hi)

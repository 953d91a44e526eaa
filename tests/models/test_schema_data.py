"""Values made from JSON schemas: they validate as the type that wrote the schema."""

from __future__ import annotations

import datetime
import decimal
import enum
import ipaddress
import json
import pathlib
import random
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pytest
from pydantic import AnyUrl, BaseModel, Field, TypeAdapter, conlist
from typing_extensions import TypedDict

from stalwart.errors import ConfigurationError
from stalwart.models._schema_data import sample_json


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Bounded(BaseModel):
    x: int = Field(ge=3, le=5)
    y: float = Field(gt=0, lt=1)
    tags: list[str] = Field(min_length=2, max_length=3)
    step: int = Field(multiple_of=7, gt=10)
    below: int = Field(lt=-5)
    word: str = Field(pattern=r"^[a-z]+$")
    long: str = Field(min_length=20, max_length=25)
    three: conlist(int, min_length=3)  # type: ignore[valid-type]


class Node(BaseModel):
    name: str
    children: list[Node]


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]
    bark: str


class Plain(TypedDict):
    a: int


@dataclass
class Record:
    b: str
    c: int | None = None


class Everything(BaseModel):
    s: str
    i: int
    f: float
    b: bool
    n: None
    li: list[int]
    tu: tuple[int, str]
    st: set[str]
    fs: frozenset[int]
    d: dict[str, int]
    lit: Literal["a", "b"]
    col: Color
    opt: int | None
    un: int | str
    bounded: Bounded
    node: Node
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    dt: datetime.datetime
    da: datetime.date
    tm: datetime.time
    td: datetime.timedelta
    u: uuid.UUID
    dec: decimal.Decimal
    url: AnyUrl
    ip4: ipaddress.IPv4Address
    ip6: ipaddress.IPv6Address
    raw: bytes
    path: pathlib.Path
    anything: Any
    typed: Plain
    record: Record
    optional_with_default: str = "kept out"


TYPES: list[Any] = [Everything, list[Everything], dict[str, Bounded], str, int, float,
                    bool, int | None, tuple[int, ...], list[Node], Literal[1, 2, 3]]


@pytest.mark.parametrize("tp", TYPES, ids=lambda t: getattr(t, "__name__", str(t)))
def test_sampled_values_validate_as_the_type(tp: Any) -> None:
    """For 40 seeds, the value made from a type's JSON schema validates as that type."""
    adapter = TypeAdapter(tp)
    schema = adapter.json_schema()
    for seed in range(40):
        value = sample_json(schema, random.Random(seed))
        adapter.validate_json(json.dumps(value))


def test_only_required_fields_are_filled_and_lists_hold_one_item() -> None:
    """The smallest readable value: optional fields left out, one item per free list."""
    value = sample_json(TypeAdapter(Everything).json_schema(), random.Random(0))
    assert "optional_with_default" not in value
    assert len(value["li"]) == 1 and len(value["bounded"]["three"]) == 3
    assert 3 <= value["bounded"]["x"] <= 5 and value["bounded"]["step"] % 7 == 0


def test_the_same_draws_give_the_same_value() -> None:
    """Seeded: one seed, one value; another seed, (here) another value."""
    schema = TypeAdapter(Everything).json_schema()
    assert sample_json(schema, random.Random(3)) == sample_json(schema, random.Random(3))
    assert sample_json(schema, random.Random(3)) != sample_json(schema, random.Random(4))


@pytest.mark.parametrize("schema", [
    {"type": "string", "pattern": "^[0-9]{6}-[A-Z]{3}$"},
    {"type": "integer", "minimum": 5, "maximum": 1},
    {"type": "array", "items": {"const": 1}, "minItems": 2, "uniqueItems": True},
    {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}, "required": ["a"]},
])
def test_a_schema_it_cannot_satisfy_is_a_configuration_error(schema: dict[str, Any]) -> None:
    """No value that would fail validation: a clear error naming what it cannot make."""
    with pytest.raises(ConfigurationError):
        sample_json(schema, random.Random(0))

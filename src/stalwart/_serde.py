"""Values in and out of the journal, with their types.

Inputs, step results and workflow results are stored as JSON text. When the code that
produced a value declares its type (a step function's return annotation, a workflow's
parameters), the value is dumped and validated through a pydantic ``TypeAdapter`` of that
type, so a step annotated ``-> Brief`` returns a ``Brief`` again on replay. Without an
annotation, pydantic models are tagged with their import path and rebuilt from it, and
everything else must be plain JSON.

The live path returns the *decoded* value too (encode, then decode), so the workflow sees
exactly the same value on its first execution as on any replay; a tuple does not turn
into a list only after a crash.

Exceptions are journaled as data (their type's name, message, traceback text and declared
attributes) by :mod:`stalwart._error_record`, re-exported here; nothing read from the
journal is ever unpickled.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import types
import weakref
from functools import lru_cache
from typing import Any, get_type_hints

from pydantic import BaseModel, TypeAdapter

from ._error_record import (
    ErrorInfo,
    encode_error,
    error_type_name,
    raised_as_replayed,
    rebuild_error,
)
from .errors import SerializationError

__all__ = ["ErrorInfo", "decode", "encode", "encode_and_read", "encode_error",
           "error_type_name", "input_hash", "raised_as_replayed", "rebuild_error",
           "return_type"]

_MODEL_TAG = "__stalwart_model__"
_NO_HINT: Any = inspect.Signature.empty
_MISSING = object()


@lru_cache(maxsize=512)
def cached_adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def _has_hint(tp: Any) -> bool:
    return tp is not _NO_HINT and tp is not None and tp is not Any and tp is not object


def plain_json(value: Any) -> Any:
    """``value`` with every pydantic model in it replaced by its JSON data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    return value


def read_plain(value: Any) -> Any:
    """Untyped JSON as read from the journal, with the import-path tags of records
    written by older versions replaced by their data (the module they name is never
    imported: see the module docstring)."""
    if isinstance(value, dict):
        if set(value) == {_MODEL_TAG, "data"} and isinstance(value[_MODEL_TAG], str):
            return read_plain(value["data"])
        return {k: read_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [read_plain(v) for v in value]
    return value


def encode(value: Any, tp: Any = _NO_HINT, *, what: str = "value") -> str:
    """Serialize ``value`` (declared as ``tp`` when known) to JSON text.

    Raises:
        SerializationError: the value cannot be represented; ``what`` names its source.
    """
    if _has_hint(tp):
        return _encode_typed(value, tp, what)[0]
    try:
        return json.dumps(plain_json(value), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"{what} of type {type(value).__name__} cannot be stored in the journal: {exc}"
        ) from exc
    except Exception as exc:  # pydantic's PydanticSerializationError and friends
        raise SerializationError(
            f"{what} of type {type(value).__name__} cannot be stored in the journal: {exc}"
        ) from exc


def encode_and_read(value: Any, tp: Any = _NO_HINT, *,
                    what: str = "value") -> tuple[str, Any]:
    """:func:`encode`, and the value as a replay will read it back (a step returns that
    the first time too, so both executions see the same value)."""
    if _has_hint(tp):
        return _encode_typed(value, tp, what)
    text = encode(value, tp, what=what)
    return text, decode(text, tp, what=what)


def _encode_typed(value: Any, tp: Any, what: str) -> tuple[str, Any]:
    adapter = cached_adapter(tp)
    try:
        # Quietly: a value of another type only makes pydantic warn while dumping;
        # whether it can be read back is what the check below decides.
        text = adapter.dump_json(value, warnings=False)
    except Exception as exc:
        raise SerializationError(
            f"{what} of type {type(value).__name__} cannot be stored in the journal: "
            f"{_first_line(exc)}") from exc
    try:
        # What replay will do with it. A value that would not read back as its declared
        # type ("abc" for an int, a NaN written as null for a float) is refused now,
        # rather than recorded and failing every replay after.
        read = adapter.validate_json(text)
    except Exception as exc:
        raise SerializationError(
            f"{what} of type {type(value).__name__} cannot be recorded as its declared "
            f"type {_type_name(tp)}: {_first_line(exc)}") from exc
    return text.decode(), read


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp)


def _first_line(exc: BaseException) -> str:
    """An error's message without pydantic's multi-line detail (type, link)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = [line for line in lines[1:] if not line.startswith("For further information")]
    return "; ".join(detail[:2]) if detail else (lines[0] if lines else type(exc).__name__)


def decode(text: str, tp: Any = _NO_HINT, *, what: str = "value") -> Any:
    """Read back a value written by :func:`encode` with the same ``tp``."""
    try:
        if _has_hint(tp):
            return cached_adapter(tp).validate_json(text)
        return read_plain(json.loads(text))
    except Exception as exc:
        raise SerializationError(f"{what} in the journal cannot be read back: {exc}") from exc


def input_hash(text: str) -> str:
    """SHA-256 (hex) of a run's journaled input, as canonical JSON (keys sorted, no
    whitespace), so that ``{"a": 1, "b": 2}`` and ``{"b": 2, "a": 1}`` are the same input.
    The one definition of "the same input" for run ids used as idempotency keys."""
    try:
        canonical = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False, allow_nan=False)
    except (ValueError, RecursionError):
        canonical = text  # not JSON (never written by us): compared as it is
    return hashlib.sha256(canonical.encode()).hexdigest()


# get_type_hints evaluates string annotations on every call (~40 us); a step calls this
# each time it runs, so plain functions keep their answer (weakly: a function that goes
# away takes its entry with it).
_RETURN_TYPES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def return_type(fn: Any) -> Any:
    """The declared return type of ``fn``, or the 'no hint' marker."""
    target = inspect.unwrap(fn)
    cacheable = isinstance(target, types.FunctionType)
    if cacheable:
        found = _RETURN_TYPES.get(target, _MISSING)
        if found is not _MISSING:
            return found
    try:
        hints = get_type_hints(target)
    except Exception:
        return _NO_HINT
    # An ``async def f() -> T`` declares T; the coroutine wrapper is not part of the value.
    tp = hints.get("return", _NO_HINT)
    if cacheable:
        _RETURN_TYPES[target] = tp
    return tp


def parameter_types(fn: Any) -> dict[str, Any]:
    """Declared parameter types of ``fn`` (missing ones are absent)."""
    target = inspect.unwrap(fn)
    try:
        hints = get_type_hints(target)
    except Exception:
        return {}
    hints.pop("return", None)
    return hints

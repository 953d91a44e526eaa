"""Exceptions in the journal, as data.

A failure is journaled as an :class:`ErrorInfo` JSON record::

    {"type": "billing.PaymentDeclined",      the type's qualified name
     "message": "card declined",             str(exc)
     "traceback": "Traceback (most ...",     the traceback, as text
     "attributes": {"code": 402},            what the class declares in journal_attributes
     "tuples": ["keys"],                     attributes that were tuples (JSON has lists)
     "args": ["x"],                          builtin types only: their JSON-able args
     "bases": ["builtins.ValueError"],       types not rebuilt: their base classes
     "cause": {...}}                         __cause__, the same record without traceback

Reading a record never runs code that the record names: :func:`rebuild_error` makes an
instance of a builtin exception type or of a class of :mod:`stalwart.errors` (an
allowlist, looked up by name; nothing is imported), sets only the attributes that class
declares, and represents every other type as a :class:`~stalwart.errors.RemoteError`
(also an instance of the nearest builtin base of the original). Records written before
this format carried a base64 pickle in ``"pickled"``: that field is ignored.

Why our own: the format is a contract of the journal (what replay raises), small, and
must be safe against a journal written by someone else; no serialization library
decides "which class may this name become" for us.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import math
import traceback as tb
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import errors as _errors
from .errors import RemoteError, StalwartError

__all__ = ["ErrorInfo", "encode_error", "error_type_name", "raised_as_replayed",
           "rebuild_error"]

_MAX_DEPTH = 3
"""How deep records nest (causes, exceptions held in attributes); deeper ones are cut."""
_ERROR_TAG = "__error__"
_DATA_TAG = "__data__"
_HIDDEN_BASES = frozenset({"builtins.BaseException", "builtins.Exception", "builtins.object"})


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An exception as the journal keeps it (see the module docstring)."""

    type: str
    message: str
    traceback: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)
    tuples: tuple[str, ...] = ()
    args: tuple[Any, ...] | None = None
    bases: tuple[str, ...] = ()
    cause: ErrorInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "message": self.message,
                               "traceback": self.traceback}
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        if self.tuples:
            out["tuples"] = list(self.tuples)
        if self.args is not None:
            out["args"] = list(self.args)
        if self.bases:
            out["bases"] = list(self.bases)
        if self.cause is not None:
            out["cause"] = self.cause.to_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> ErrorInfo:
        """The record in ``text``.

        Raises:
            ValueError: ``text`` is not a JSON object (fields of the wrong type are read
                as absent, never trusted).
        """
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError("the error record nests too deeply") from None
        if not isinstance(data, dict):
            raise ValueError("an error record is a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], _depth: int = 0) -> ErrorInfo:
        """The record in ``data`` (a decoded JSON object), read defensively."""
        attributes = data.get("attributes")
        args = data.get("args")
        cause = data.get("cause")
        return cls(
            type=_text(data.get("type"), "unknown"),
            message=_text(data.get("message"), ""),
            traceback=_text(data.get("traceback"), ""),
            attributes={k: v for k, v in attributes.items() if isinstance(k, str)}
            if isinstance(attributes, dict) else {},
            tuples=_names(data.get("tuples")),
            args=tuple(args) if isinstance(args, list) else None,
            bases=_names(data.get("bases")),
            cause=cls.from_dict(cause, _depth + 1)
            if isinstance(cause, dict) and _depth < _MAX_DEPTH else None,
        )


def _text(value: Any, default: str) -> str:
    return value if isinstance(value, str) else default


def _names(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


# -- writing ---------------------------------------------------------------------------


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def encode_error(exc: BaseException) -> ErrorInfo:
    """The record of ``exc``, with its traceback."""
    return _record(exc, 0, with_traceback=True)


def _record(exc: BaseException, depth: int, *, with_traceback: bool) -> ErrorInfo:
    if isinstance(exc, RemoteError):  # a recorded error travelling on: the same facts
        return ErrorInfo(
            type=exc.type_name, message=exc.message,
            traceback=exc.traceback if with_traceback else "",
            attributes={k: _data(v, depth) for k, v in exc.attributes.items()},
            tuples=tuple(k for k, v in exc.attributes.items() if isinstance(v, tuple)),
            bases=exc.bases, cause=_cause(exc, depth))
    cls = type(exc)
    known = _allowed(qualified_name(cls)) is cls
    values = _declared(exc)
    args = None
    if cls.__module__ == "builtins":
        args = _json_args(exc.args)
    return ErrorInfo(
        type=qualified_name(cls), message=_message(exc),
        traceback=_traceback(exc) if with_traceback else "",
        attributes={k: _data(v, depth) for k, v in values.items()},
        tuples=tuple(k for k, v in values.items() if isinstance(v, tuple)),
        args=args,
        bases=() if known else tuple(n for n in map(qualified_name, cls.__mro__[1:])
                                     if n not in _HIDDEN_BASES),
        cause=_cause(exc, depth))


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a __str__ that fails must not lose the failure itself
        return f"<unprintable {type(exc).__name__}>"


def _traceback(exc: BaseException) -> str:
    try:
        return "".join(tb.format_exception(exc))
    except Exception:
        return "".join(tb.format_tb(exc.__traceback__)) + _message(exc)


def _cause(exc: BaseException, depth: int) -> ErrorInfo | None:
    cause = exc.__cause__
    if cause is None or depth + 1 > _MAX_DEPTH:
        return None
    return _record(cause, depth + 1, with_traceback=False)


def _declared(exc: BaseException) -> dict[str, Any]:
    """The attributes ``exc``'s class and its bases declare in ``journal_attributes``."""
    names: dict[str, None] = {}
    for klass in reversed(type(exc).__mro__):
        declared = vars(klass).get("journal_attributes")
        if isinstance(declared, tuple | list):
            names.update((n, None) for n in declared if isinstance(n, str))
    missing = object()
    out = {}
    for name in names:
        try:
            value = getattr(exc, name, missing)
        except Exception:  # a property that fails: not recorded
            continue
        if value is not missing:
            out[name] = value
    return out


def _json_args(args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    ok = all(a is None or isinstance(a, str | bool | int)
             or (isinstance(a, float) and math.isfinite(a)) for a in args)
    return args if ok else None


def _data(value: Any, depth: int) -> Any:
    """``value`` as JSON data: exceptions as nested records, unknown objects as repr."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, BaseException):
        if depth + 1 > _MAX_DEPTH:
            return f"{qualified_name(type(value))}: {value}"
        return {_ERROR_TAG: _record(value, depth + 1, with_traceback=False).to_dict()}
    if _journaled_dataclass(type(value)):  # e.g. a RateLimitedError's ProviderQuota
        fields = {f.name: _data(getattr(value, f.name), depth)
                  for f in dataclasses.fields(value)}
        return {_DATA_TAG: type(value).__name__, "fields": fields}
    if isinstance(value, list | tuple):
        return [_data(v, depth) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _data(v, depth) for k, v in value.items()}
    return repr(value)


# -- reading ---------------------------------------------------------------------------


def _allowlist() -> dict[str, type[Exception]]:
    found: dict[str, type[Exception]] = {}
    for name, obj in vars(builtins).items():
        if (isinstance(obj, type) and issubclass(obj, Exception)
                and not issubclass(obj, BaseExceptionGroup)):
            found[f"builtins.{name}"] = obj
    for name, obj in vars(_errors).items():
        if (isinstance(obj, type) and issubclass(obj, StalwartError)
                and obj.__module__ == _errors.__name__ and not name.startswith("_")
                and not issubclass(obj, RemoteError)):
            found[qualified_name(obj)] = obj
    return found


_ALLOWED = _allowlist()


def _allowed(name: str) -> type[Exception] | None:
    """The class a record's type name may be rebuilt as (``None``: a RemoteError)."""
    return _ALLOWED.get(name)


def rebuild_error(info: ErrorInfo, **context: Any) -> Exception:
    """The recorded exception: its own type when that is a builtin or a class of
    :mod:`stalwart.errors`, else a :class:`RemoteError`. ``context`` (``run_id``,
    ``step_id``) fills in where a stalwart error does not say."""
    return _rebuild(info, 0, context)


def _rebuild(info: ErrorInfo, depth: int, context: Mapping[str, Any]) -> Exception:
    cls = _allowed(info.type)
    exc = _exactly(cls, info, depth) if cls is not None else None
    if exc is None:
        exc = _remote(info, cls, depth)
    if isinstance(exc, StalwartError):
        for key in ("run_id", "step_id"):
            if getattr(exc, key, None) is None and context.get(key) is not None:
                setattr(exc, key, context[key])
    if info.cause is not None and depth < _MAX_DEPTH:
        exc.__cause__ = _rebuild(info.cause, depth + 1, {})
    return exc


def _exactly(cls: type[Exception], info: ErrorInfo, depth: int) -> Exception | None:
    if issubclass(cls, StalwartError):
        err = cls.__new__(cls)
        Exception.__init__(err, info.message)
        err.message = info.message
        for name in _declared_names(cls):  # never a name the record alone chose
            value = (_value(info.attributes[name], name in info.tuples, depth)
                     if name in info.attributes else None)
            if not _fits(name, value):
                value = None  # a record of the wrong shape: read as absent
            if value is None and hasattr(cls, name):
                continue  # absent: the class default (retryable)
            setattr(err, name, value)
        return err
    try:  # a builtin: from its arguments, else from its message
        built = cls(*info.args) if info.args is not None else cls(info.message)
    except Exception:
        return None
    return built if type(built) is cls else None


_BASE_TYPES: dict[str, tuple[type, ...]] = {
    "retryable": (bool,), "retry_after": (int, float), "run_id": (str,), "step_id": (str,),
    "attempt": (int,)}
"""The shape of the attributes every stalwart error has (policies compute with them)."""


def _fits(name: str, value: Any) -> bool:
    wanted = _BASE_TYPES.get(name)
    if wanted is None or value is None:
        return True
    if isinstance(value, bool):
        return bool in wanted
    return isinstance(value, wanted)


def _declared_names(cls: type) -> frozenset[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        declared = vars(klass).get("journal_attributes")
        if isinstance(declared, tuple | list):
            names.update(n for n in declared if isinstance(n, str))
    return frozenset(names)


def _journaled_dataclass(cls: type) -> bool:
    """A dataclass of :mod:`stalwart.errors` (the only ones read back as themselves)."""
    return (dataclasses.is_dataclass(cls) and cls.__module__ == _errors.__name__
            and getattr(_errors, cls.__name__, None) is cls)


def _dataclass_value(name: Any, fields: Any) -> Any:
    """A recorded dataclass of :mod:`stalwart.errors`, rebuilt from its scalar fields
    (looked up by name in that module only); ``None`` if the record is not one."""
    cls = getattr(_errors, name, None) if isinstance(name, str) else None
    if not isinstance(cls, type) or not _journaled_dataclass(cls) or not isinstance(
            fields, dict):
        return None
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in fields.items() if k in known
              and (v is None or (isinstance(v, int | float | str) and not isinstance(v, bool)))}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError):
        return None


def _value(value: Any, as_tuple: bool, depth: int) -> Any:
    if isinstance(value, dict) and set(value) == {_DATA_TAG, "fields"}:
        return _dataclass_value(value[_DATA_TAG], value["fields"])
    if isinstance(value, dict):
        nested = value.get(_ERROR_TAG)
        if len(value) == 1 and isinstance(nested, dict):
            if depth + 1 > _MAX_DEPTH:
                return None
            return _rebuild(ErrorInfo.from_dict(nested, depth + 1), depth + 1, {})
        return {k: _value(v, False, depth) for k, v in value.items()}
    if isinstance(value, list):
        items = [_value(v, False, depth) for v in value]
        return tuple(items) if as_tuple else items
    return value


def _remote(info: ErrorInfo, cls: type[Exception] | None, depth: int) -> RemoteError:
    bases = info.bases
    if cls is not None and not bases:  # a builtin that could not be made as itself
        bases = tuple(n for n in map(qualified_name, cls.__mro__[1:])
                      if n not in _HIDDEN_BASES)
    chain = [cls, *(_allowed(b) for b in bases)]
    base = next((b for b in chain if b is not None and b in _REMOTE_BASES), None)
    attributes = {k: _value(v, k in info.tuples, depth) for k, v in info.attributes.items()}
    return _remote_class(base)(info.message, type_name=info.type, traceback=info.traceback,
                               attributes=attributes, bases=bases)


def _can_be_remote(base: type[Exception]) -> bool:
    try:
        _make_remote_class(base)("probe", type_name="probe")
    except Exception:
        return False  # a constructor of its own (UnicodeDecodeError): use its base's
    return True


def _make_remote_class(base: type[Exception]) -> type[RemoteError]:
    name = f"Remote{base.__name__}"
    return type(name, (RemoteError, base), {
        "__module__": _errors.__name__, "__qualname__": name,
        "__doc__": f"A :class:`RemoteError` whose original type derived from "
                   f"``{base.__name__}``.",
    })


_REMOTE_BASES: dict[type[Exception], type[RemoteError]] = {}
for _cls in _ALLOWED.values():
    if _cls.__module__ == "builtins" and _cls is not Exception and _can_be_remote(_cls):
        _REMOTE_BASES[_cls] = _make_remote_class(_cls)


def _remote_class(base: type[Exception] | None) -> type[RemoteError]:
    return RemoteError if base is None else _REMOTE_BASES[base]


# -- the live path ---------------------------------------------------------------------


def raised_as_replayed(exc: BaseException, info: ErrorInfo, **context: Any) -> BaseException:
    """What a failed step raises on its first execution: ``exc`` itself when a replay
    rebuilds it as its own type, else what the replay will raise (a RemoteError), so
    workflow code takes the same ``except`` branch both times."""
    rebuilt = rebuild_error(info, **context)
    if type(rebuilt) is type(exc):
        return exc
    rebuilt.__suppress_context__ = True
    return rebuilt


def error_type_name(exc: object) -> str:
    """The bare name of ``exc``'s type; of the original's for a RemoteError."""
    if isinstance(exc, RemoteError):
        return exc.type_name.rpartition(".")[2]
    return type(exc).__name__

"""Workflow definitions and how their inputs travel through the journal."""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, final

from pydantic import TypeAdapter, ValidationError

from .._serde import cached_adapter, parameter_types, plain_json, read_plain, return_type
from ..errors import ConfigurationError, SerializationError
from ._budget import Budget

__all__ = ["Workflow"]

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C")
"""The context a workflow function takes first (:class:`stalwart.Context`, which this
module does not know: the workflow definition sits below the context in the engine)."""

_EMPTY = inspect.Parameter.empty


def _type_adapter(tp: Any) -> TypeAdapter[Any]:
    """A cached adapter (building one costs a millisecond, per start and per execution)."""
    try:
        return cached_adapter(tp)
    except TypeError:  # an unhashable annotation, e.g. Annotated with a list in it
        return TypeAdapter(tp)


def type_label(tp: Any) -> str:
    """How a type reads in a message: ``str``, ``list[int]``, ``Brief``."""
    if isinstance(tp, type) and not getattr(tp, "__args__", None):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _invalid(what: str, tp: Any, value: Any, exc: ValidationError) -> str:
    """``argument 'name' of workflow w expects str, got int`` (pydantic's own message,
    without its URL, where the problem is inside the value)."""
    errors = exc.errors(include_url=False)
    head = f"{what} expects {type_label(tp)}, got {type(value).__name__}"
    inner = [e for e in errors if e["loc"]]
    if not inner:
        return head
    parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in inner[:3]]
    more = f" (and {len(inner) - 3} more)" if len(inner) > 3 else ""
    return f"{what} expects {type_label(tp)}: {'; '.join(parts)}{more}"


def _to_jsonable(value: Any, tp: Any, what: str) -> Any:
    try:
        if tp is not _EMPTY and tp is not Any:
            adapter = _type_adapter(tp)
            # Validate first: dumping a value of the wrong type would only warn.
            return adapter.dump_python(adapter.validate_python(value), mode="json")
        out = plain_json(value)
        json.dumps(out, allow_nan=False)
        return out
    except ValidationError as exc:
        raise SerializationError(_invalid(what, tp, value, exc)) from None
    except Exception as exc:
        raise SerializationError(f"{what} cannot be stored in the journal: {exc}") from exc


def _from_jsonable(data: Any, tp: Any, what: str) -> Any:
    try:
        if tp is not _EMPTY and tp is not Any:
            return _type_adapter(tp).validate_python(data)
        return read_plain(data)
    except ValidationError as exc:
        raise SerializationError(_invalid(what, tp, data, exc)) from None
    except Exception as exc:
        raise SerializationError(f"{what} is not valid: {exc}") from exc


def _importable_module(module: str) -> str:
    """The name another process imports ``module`` by: for ``__main__``, the module a
    ``python -m pkg.mod`` ran, or the file a ``python app.py`` ran (``app``), when its
    name can be imported; else ``__main__`` itself (``python -c``, a notebook)."""
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None) and spec.name != "__main__":
        return str(spec.name)
    file = getattr(main, "__file__", None)
    if isinstance(file, str) and file.endswith(".py") and Path(file).stem.isidentifier():
        return Path(file).stem
    return module


def _takes_an_object(tp: Any) -> bool:
    """Whether a parameter of type ``tp`` can be given a JSON object (a dict, a model,
    a dataclass, a TypedDict, ``Any``), judged from the type's JSON schema."""
    if tp is _EMPTY or tp is Any:
        return True
    try:
        schema = _type_adapter(tp).json_schema()
    except Exception:  # a type pydantic cannot describe: let validation decide
        return True
    defs = schema.get("$defs", {})

    def objecty(s: Any) -> bool:
        if not isinstance(s, dict):
            return bool(s)
        ref = s.get("$ref")
        if isinstance(ref, str):
            return objecty(defs.get(ref.rsplit("/", 1)[-1], {}))
        branches = s.get("anyOf") or s.get("oneOf") or s.get("allOf")
        if branches:
            return any(objecty(b) for b in branches)
        kind = s.get("type")
        return kind is None or kind == "object" or (isinstance(kind, list)
                                                     and "object" in kind)

    return objecty(schema)


@final
class Workflow(Generic[P, R]):
    """A registered workflow: an async function whose first parameter is the Context.

    Created by ``@runtime.workflow``; pass it to ``runtime.start``/``runtime.run``, or to
    ``ctx.child`` from another workflow. ``P`` are its parameters after the context,
    ``R`` its result: ``app.start(wf, ...)`` and ``ctx.child(wf, ...)`` are checked
    against them.
    """

    def __init__(self, fn: Callable[Concatenate[C, P], Awaitable[R]], *,
                 name: str | None = None, pool: str | None = None,
                 budget: Budget | None = None) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigurationError(
                f"workflow {getattr(fn, '__qualname__', fn)!r} must be an async function")
        params = list(inspect.signature(fn).parameters.values())
        if not params or params[0].kind not in (
                inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            raise ConfigurationError(
                f"workflow {fn.__qualname__!r} must take the Context as its first parameter")
        self.fn: Callable[..., Awaitable[R]] = fn
        """The workflow function (called with the context first)."""
        self.name = name or fn.__qualname__
        self.pool = pool
        """The worker pool that executes its runs (``stalwart worker --pool``); ``None``
        is the ``"default"`` pool."""
        self.budget = budget
        """Limits on what each run of it may spend (:class:`~stalwart.Budget`)."""
        self.ref = f"{_importable_module(fn.__module__)}:{fn.__qualname__}"
        """Where the function lives, ``module:qualname``, recorded with each run so that
        ``stalwart resume`` can import it. A script run as ``python app.py`` records
        ``app`` (not ``__main__``), which another process can import."""
        self._params = params[1:]
        self._hints = parameter_types(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Workflow {self.name}>"

    @property
    def result_type(self) -> Any:
        """The declared result type (what a run's result is read back as)."""
        return return_type(self.fn)

    def encode_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Bind and serialize the arguments; also checks them against the annotations."""
        sig = inspect.Signature(self._params)
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise ConfigurationError(f"workflow {self.name}: {exc}") from exc
        data: dict[str, Any] = {}
        for pname, value in bound.arguments.items():
            param = sig.parameters[pname]
            tp = self._hints.get(pname, _EMPTY)
            what = f"argument {pname!r} of workflow {self.name}"
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                data[pname] = [_to_jsonable(v, tp, what) for v in value]
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                data[pname] = {k: _to_jsonable(v, tp, what) for k, v in value.items()}
            else:
                data[pname] = _to_jsonable(value, tp, what)
        text = json.dumps(data, separators=(",", ":"))
        self.decode_input(text)  # fail now, at start, rather than in the worker
        return text

    def decode_input(self, text: str) -> tuple[list[Any], dict[str, Any]]:
        data = json.loads(text)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for param in self._params:
            if param.name not in data:
                continue
            raw = data[param.name]
            tp = self._hints.get(param.name, _EMPTY)
            what = f"argument {param.name!r} of workflow {self.name}"
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(_from_jsonable(v, tp, what) for v in raw)
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update({k: _from_jsonable(v, tp, what) for k, v in raw.items()})
            elif param.kind is inspect.Parameter.KEYWORD_ONLY:
                kwargs[param.name] = _from_jsonable(raw, tp, what)
            else:
                args.append(_from_jsonable(raw, tp, what))
        return args, kwargs

    def describe_parameters(self) -> str:
        """Its arguments as a signature reads: ``name: str, times: int = 1``."""
        parts = []
        for p in self._params:
            tp = self._hints.get(p.name, _EMPTY)
            text = p.name if tp is _EMPTY else f"{p.name}: {type_label(tp)}"
            if p.default is not _EMPTY:
                text += f" = {p.default!r}"
            parts.append(text)
        return ", ".join(parts) or "no arguments"

    def input_from_json(self, value: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Arguments from a CLI ``--input``: an object binds by name, an array by position,
        anything else is the single argument."""
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            names = {p.name for p in self._params}
            if set(value) <= names or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                          for p in self._params):
                return (), dict(value)
            unknown = sorted(set(value) - names)
            # Arguments by name, some of them not its own; or names it does not have
            # where it cannot take an object as its one argument (a typo: {"nme": ..}).
            single = [p for p in self._params if p.kind in (
                inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            if set(value) & names or not (len(single) == 1 and _takes_an_object(
                    self._hints.get(single[0].name, _EMPTY))):
                raise ConfigurationError(
                    f"workflow {self.name}: unexpected argument(s) "
                    f"{', '.join(map(repr, unknown))} (it takes "
                    f"{self.describe_parameters()})")
        if isinstance(value, list):
            return tuple(value), {}
        if value is None and not self._params:
            return (), {}
        return (value,), {}

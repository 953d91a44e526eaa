"""JSON Schema for tools described by a schema rather than a signature (MCP tools).

One place checks a schema (:func:`check_schema`) and validates a value against it
(:func:`schema_validator` for arguments, :func:`schema_problem` for results), with the
``jsonschema`` package (a dependency of the ``mcp`` extra), imported only here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigurationError, ToolArgumentsError, ToolSchemaError, _install_hint

__all__ = ["check_schema", "schema_problem", "schema_validator"]


def _jsonschema() -> Any:
    try:  # untyped: used through Any
        return importlib.import_module("jsonschema")
    except ImportError as exc:  # pragma: no cover - the mcp extra installs it
        raise ConfigurationError(
            "tools described by a JSON schema (MCP servers, A2A agents) need the "
            f"jsonschema package, in the mcp and a2a extras: {_install_hint('a2a')}, "
            "or '.[mcp]'") from exc


def check_schema(tool: str, schema: object, *, what: str = "input schema",
                 server: str = "", require_object: bool = True) -> Any:
    """A validator for ``schema`` (draft 2020-12 unless it names its ``$schema``), or
    :class:`ToolSchemaError` when it is not a valid JSON Schema (or, for arguments, not
    one describing an object)."""
    js = _jsonschema()
    where = f"tool {tool!r}" + (f" of MCP server {server!r}" if server else "")
    if not isinstance(schema, Mapping):
        raise ToolSchemaError(f"{where}: its {what} is not a JSON object "
                              f"({type(schema).__name__})", tool=tool, server=server)
    cls = js.validators.validator_for(schema, default=js.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except js.SchemaError as exc:
        path = "/".join(str(p) for p in exc.path) or "(root)"
        raise ToolSchemaError(f"{where}: its {what} is not valid JSON Schema at {path}: "
                              f"{exc.message}", tool=tool, server=server) from None
    if require_object and schema.get("type", "object") != "object":
        raise ToolSchemaError(f"{where}: its {what} must describe an object (type "
                              f"'object'), not {schema.get('type')!r}", tool=tool,
                              server=server)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _errors(validator: Any, value: object) -> list[dict[str, Any]]:
    return [{"loc": list(e.absolute_path), "msg": e.message, "type": str(e.validator)}
            for e in sorted(validator.iter_errors(value), key=lambda e: list(e.path))]


def schema_validator(tool: str, schema: Mapping[str, Any], *, server: str = ""
                     ) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Validates a tool's arguments against its input schema: returns them unchanged, or
    raises :class:`ToolArgumentsError` (the same shape of errors as pydantic's)."""
    validator = check_schema(tool, schema, server=server)

    def validate(arguments: dict[str, Any]) -> dict[str, Any]:
        errors = _errors(validator, arguments)
        if errors:
            raise ToolArgumentsError(tool, errors)
        return dict(arguments)

    return validate


def schema_problem(validator: Any, value: object) -> str | None:
    """What is wrong with ``value`` for a validator from :func:`check_schema`, in one
    line, or ``None``."""
    errors = _errors(validator, value)
    if not errors:
        return None
    first = errors[0]
    at = "/".join(str(p) for p in first["loc"]) or "(root)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"at {at}: {first['msg']}{more}"

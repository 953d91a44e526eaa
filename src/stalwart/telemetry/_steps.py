"""What the span of a plain step or of a run holds besides its ids and times, from what
the journal records of them: shared by the traced process (``_otel``) and the span export
process (``_sidecar``), which builds those spans from a few plain values, so that both
make the very same span.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["RUN_ID", "STEP_ID", "STEP_NAME", "error_of", "run_span", "step_name", "step_span"]

RUN_ID = "stalwart.run_id"
STEP_ID = "stalwart.step_id"
STEP_NAME = "stalwart.step.name"
"""The attributes every step span has, in this order (``_otlp.PlainSpans`` encodes them
without building the dict)."""


def error_of(info_json: str) -> tuple[str, str]:
    """``(error.type, message)`` of an ``ErrorInfo`` JSON (something readable if it is
    not one)."""
    try:
        info = json.loads(info_json)
        return str(info.get("type") or "error"), str(info.get("message") or "")
    except (ValueError, AttributeError):
        return "error", info_json[:200]


def step_span(run_id: str, step_id: str, name: str,
              error: str | None) -> tuple[str, dict[str, Any], str | None]:
    """A plain step's span name, attributes and error message (``None``: it completed),
    from its run id, step id, step name and ``ErrorInfo`` JSON when it failed."""
    attributes: dict[str, Any] = {RUN_ID: run_id, STEP_ID: step_id, STEP_NAME: name}
    message = None
    if error is not None:
        attributes["error.type"], message = error_of(error)
    return step_name(name), attributes, message


def step_name(name: str) -> str:
    """The name of the span of the step called ``name``."""
    return f"step {name}"


def run_span(attributes: dict[str, Any], status: str,
             error: str | None) -> tuple[str, dict[str, Any], str | None]:
    """A run's span name, attributes and error message (``None``: it did not fail), from
    the attributes it got when it started (``stalwart.workflow`` among them), the status
    it ended with and its ``ErrorInfo`` JSON."""
    attributes = dict(attributes)
    attributes["stalwart.run.status"] = status
    message = None
    if status in ("failed", "dead_lettered"):
        attributes["error.type"], message = error_of(error or "{}")
    return f"workflow {attributes['stalwart.workflow']}", attributes, message


STEP_ATTRIBUTES_MAX = 4
"""The most attributes :func:`step_span` gives a span."""

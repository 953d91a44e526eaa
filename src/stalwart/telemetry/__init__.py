"""Telemetry: OpenTelemetry tracing and metrics for stalwart runs (the ``otel`` extra).

Turn it on per runtime::

    import stalwart as sw
    from stalwart.telemetry import Tracing

    app = sw.Runtime(tracing=Tracing())                         # OTLP from OTEL_* vars
    app = sw.Runtime(tracing=Tracing(tracer_provider=provider))  # your SDK provider
    app = sw.Runtime(tracing=Tracing(steps="calls", capture_content="hash"))

:class:`Interceptor` and its ``*Input`` dataclasses are the hooks the runtime calls;
:class:`Tracing` binds the OpenTelemetry one. :func:`configure` builds SDK providers from
the ``OTEL_*`` variables; :class:`RunIdGenerator` gives stalwart's spans their ids. This
package imports without the extra; ``configure``, ``RunIdGenerator`` and ``Tracing.bind``
need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import StepSpans as StepSpans
from ._config import Tracing as Tracing
from ._ids import span_id_for as span_id_for
from ._ids import trace_id_for as trace_id_for
from ._interceptor import NOOP as NOOP
from ._interceptor import AgentEndInput as AgentEndInput
from ._interceptor import AgentStartInput as AgentStartInput
from ._interceptor import CaptureContent as CaptureContent
from ._interceptor import Interceptor as Interceptor
from ._interceptor import ModelCallEndInput as ModelCallEndInput
from ._interceptor import ModelCallStartInput as ModelCallStartInput
from ._interceptor import PolicyInput as PolicyInput
from ._interceptor import RunEndInput as RunEndInput
from ._interceptor import RunStartInput as RunStartInput
from ._interceptor import StepEndInput as StepEndInput
from ._interceptor import StepStartInput as StepStartInput
from ._interceptor import ToolCallEndInput as ToolCallEndInput
from ._interceptor import ToolCallStartInput as ToolCallStartInput

if TYPE_CHECKING:
    from ._setup import Providers as Providers
    from ._setup import RunIdGenerator as RunIdGenerator
    from ._setup import configure as configure

__all__ = [
    "Tracing", "StepSpans", "configure", "Providers", "RunIdGenerator", "CaptureContent",
    "trace_id_for", "span_id_for",
    # the hooks
    "Interceptor", "NOOP", "RunStartInput", "RunEndInput", "StepStartInput", "StepEndInput",
    "AgentStartInput", "AgentEndInput", "ModelCallStartInput", "ModelCallEndInput",
    "ToolCallStartInput", "ToolCallEndInput", "PolicyInput",
]


def __getattr__(name: str) -> Any:
    if name in ("configure", "Providers", "RunIdGenerator"):
        from . import _setup

        return getattr(_setup, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Telemetry: OpenTelemetry tracing and metrics for stalwart runs (the ``otel`` extra).

Turn it on per runtime::

    import stalwart as sw
    from stalwart.telemetry import Tracing

    app = sw.Runtime(tracing=Tracing())                         # OTLP from OTEL_* vars
    app = sw.Runtime(tracing=Tracing(tracer_provider=provider))  # your SDK provider
    app = sw.Runtime(tracing=Tracing(steps="calls", capture_content="hash"))

:class:`Interceptor` and its ``*Input`` dataclasses are the hooks the runtime calls
(they belong to the engine, :mod:`stalwart.engine._interceptor`, and are re-exported
here); :class:`Tracing` is an :class:`Instrumentation` that binds the OpenTelemetry one
from a :class:`BindInput`. :func:`configure` builds SDK providers from
the ``OTEL_*`` variables; :class:`RunIdGenerator` gives stalwart's spans their ids. This
package imports without the extra; ``configure``, ``RunIdGenerator`` and ``Tracing.bind``
need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..engine._interceptor import NOOP as NOOP
from ..engine._interceptor import AgentEndInput as AgentEndInput
from ..engine._interceptor import AgentStartInput as AgentStartInput
from ..engine._interceptor import BindInput as BindInput
from ..engine._interceptor import CaptureContent as CaptureContent
from ..engine._interceptor import Instrumentation as Instrumentation
from ..engine._interceptor import Interceptor as Interceptor
from ..engine._interceptor import ModelCallEndInput as ModelCallEndInput
from ..engine._interceptor import ModelCallStartInput as ModelCallStartInput
from ..engine._interceptor import PolicyInput as PolicyInput
from ..engine._interceptor import RunEndInput as RunEndInput
from ..engine._interceptor import RunStartInput as RunStartInput
from ..engine._interceptor import StepEndInput as StepEndInput
from ..engine._interceptor import StepStartInput as StepStartInput
from ..engine._interceptor import ToolCallEndInput as ToolCallEndInput
from ..engine._interceptor import ToolCallStartInput as ToolCallStartInput
from ._config import StepSpans as StepSpans
from ._config import Tracing as Tracing
from ._ids import span_id_for as span_id_for
from ._ids import trace_id_for as trace_id_for

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
    "ToolCallStartInput", "ToolCallEndInput", "PolicyInput", "Instrumentation", "BindInput",
]


def __getattr__(name: str) -> Any:
    if name in ("configure", "Providers", "RunIdGenerator"):
        from . import _setup

        return getattr(_setup, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""``configure()``: OpenTelemetry SDK providers from the standard ``OTEL_*`` variables,
with the official exporters; and :class:`RunIdGenerator`, which gives stalwart's spans
the ids derived from the journal (``_ids``) through the SDK's ``IdGenerator`` hook.

The SDK and its exporters read most variables themselves; this module only chooses the
exporters, as the SDK's own auto-configuration does, without ``opentelemetry-instrument``:

=================================  ========================================================
``OTEL_SDK_DISABLED``              ``true``: install nothing (tracing stays off)
``OTEL_SERVICE_NAME``,             the resource (read by ``Resource.create``)
``OTEL_RESOURCE_ATTRIBUTES``
``OTEL_TRACES_EXPORTER``,          ``otlp`` (default), ``console`` (to stderr: stdout is
``OTEL_METRICS_EXPORTER``          the program's) or ``none``; several, comma-separated
``OTEL_EXPORTER_OTLP_PROTOCOL``,   ``http/protobuf`` (default) or ``grpc`` (the
``..._{TRACES,METRICS}_PROTOCOL``  ``otel-grpc`` extra)
``OTEL_EXPORTER_OTLP_*``           endpoint, headers, timeout...: read by the exporters
``OTEL_TRACES_SAMPLER[_ARG]``,     read by the SDK's ``TracerProvider``, batch span
``OTEL_BSP_*``, ``OTEL_METRIC_*``  processor and periodic metric reader
=================================  ========================================================
"""

from __future__ import annotations

import contextvars
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any, final

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Sampler

from ..errors import ConfigurationError, _install_hint
from ._env import sdk_disabled

__all__ = ["CHOSEN", "Providers", "RunIdGenerator", "configure"]

CHOSEN: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "stalwart_chosen_ids", default=None)
"""``(trace id, span id)`` for the span stalwart is starting (set around ``start_span``)."""


@final
class RunIdGenerator(IdGenerator):
    """An ``IdGenerator`` for a ``TracerProvider`` that stalwart traces runs with.

    ``Tracing`` installs one on the provider it is given (wrapping the generator the
    provider had), and :func:`~stalwart.telemetry.configure` builds its provider with
    one; build yours with ``TracerProvider(id_generator=RunIdGenerator())`` to leave it
    untouched. Spans other than stalwart's get their ids from ``base``.
    """

    def __init__(self, base: IdGenerator | None = None) -> None:
        self.base = base if base is not None else RandomIdGenerator()

    def generate_span_id(self) -> int:
        chosen = CHOSEN.get()
        return self.base.generate_span_id() if chosen is None else chosen[1]

    def generate_trace_id(self) -> int:
        chosen = CHOSEN.get()
        return self.base.generate_trace_id() if chosen is None else chosen[0]

    def is_trace_id_random(self) -> bool:
        # A run's trace id is a hash of its id: uniform, but not random.
        return CHOSEN.get() is None and self.base.is_trace_id_random()


@final
@dataclass(frozen=True, slots=True)
class Providers:
    """What :func:`configure` built."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider


def _kinds(var: str) -> list[str]:
    kinds = [k.strip().lower() for k in (os.environ.get(var) or "otlp").split(",")]
    for kind in kinds:
        if kind not in ("otlp", "console", "none"):
            raise ConfigurationError(
                f"{var}={kind!r}: stalwart supports otlp, console or none")
    return [k for k in kinds if k != "none"]


def _protocol(signal: str) -> str:
    for var in (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = (os.environ.get(var) or "").strip().lower()
        if value:
            if value not in ("http/protobuf", "grpc"):
                raise ConfigurationError(
                    f"{var}={value!r}: stalwart exports OTLP over http/protobuf or grpc")
            return value
    return "http/protobuf"


_OTLP = {"http/protobuf": ("opentelemetry.exporter.otlp.proto.http", "otel"),
         "grpc": ("opentelemetry.exporter.otlp.proto.grpc", "otel-grpc")}


def _otlp(signal: str) -> Any:
    """The official OTLP exporter class for ``signal`` (``TRACES``/``METRICS``)."""
    package, extra = _OTLP[_protocol(signal)]
    module, name = (("trace_exporter", "OTLPSpanExporter") if signal == "TRACES"
                    else ("metric_exporter", "OTLPMetricExporter"))
    try:
        return getattr(importlib.import_module(f"{package}.{module}"), name)
    except ImportError as exc:
        raise ConfigurationError(f"OTLP export needs {package.replace('.', '-')}: "
                                 f"{_install_hint(extra)}") from exc


def _span_exporters() -> list[SpanExporter]:
    return [ConsoleSpanExporter(out=sys.stderr) if kind == "console" else _otlp("TRACES")()
            for kind in _kinds("OTEL_TRACES_EXPORTER")]


def _metric_exporters() -> list[MetricExporter]:
    return [ConsoleMetricExporter(out=sys.stderr) if kind == "console"
            else _otlp("METRICS")() for kind in _kinds("OTEL_METRICS_EXPORTER")]


def configure(*, span_exporter: SpanExporter | None = None,
              metric_reader: MetricReader | None = None, resource: Resource | None = None,
              sampler: Sampler | None = None, set_global: bool = True) -> Providers | None:
    """Build SDK tracer and meter providers from the ``OTEL_*`` environment variables
    (see the module docstring) and, with ``set_global``, install them as OpenTelemetry's
    global providers, which ``Tracing()`` uses by default.

    Spans go through a ``BatchSpanProcessor`` to the official OTLP exporter (or what
    ``OTEL_TRACES_EXPORTER`` names); the tracer provider gets a
    :class:`~stalwart.telemetry.RunIdGenerator`.

    Args:
        span_exporter: export spans here (batched) instead of what
            ``OTEL_TRACES_EXPORTER`` names.
        metric_reader: read metrics with this instead of a periodic reader exporting to
            what ``OTEL_METRICS_EXPORTER`` names.
        resource: the resource; default ``Resource.create()`` (``OTEL_SERVICE_NAME``...).
        sampler: the tracer provider's sampler; default: ``OTEL_TRACES_SAMPLER`` (the
            SDK's default: ``parentbased_always_on``).
        set_global: install the providers globally (OpenTelemetry allows this once).

    Returns:
        The providers, or ``None`` when ``OTEL_SDK_DISABLED`` is true.
    """
    if sdk_disabled():
        return None
    span_exporters = [span_exporter] if span_exporter is not None else _span_exporters()
    metric_exporters = [] if metric_reader is not None else _metric_exporters()
    resource = resource or Resource.create()
    tracer_provider = TracerProvider(resource=resource, sampler=sampler,
                                     id_generator=RunIdGenerator())
    for exporter in span_exporters:
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    readers = [metric_reader] if metric_reader is not None else [
        PeriodicExportingMetricReader(e) for e in metric_exporters]
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
    return Providers(tracer_provider, meter_provider)

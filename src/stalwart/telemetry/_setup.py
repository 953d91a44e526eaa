"""``configure()``: OpenTelemetry SDK providers from the standard ``OTEL_*`` variables.

The SDK reads most variables itself; this module only chooses exporters the way the
SDK's own auto-configuration does, without needing ``opentelemetry-instrument``:

=================================  ========================================================
``OTEL_SDK_DISABLED``              ``true``: install nothing (tracing stays off)
``OTEL_SERVICE_NAME``,             the resource (read by ``Resource.create``)
``OTEL_RESOURCE_ATTRIBUTES``
``OTEL_TRACES_EXPORTER``           ``otlp`` (default), ``console`` or ``none``
``OTEL_METRICS_EXPORTER``          ``otlp`` (default), ``console`` or ``none``
``OTEL_EXPORTER_OTLP_PROTOCOL``    ``http/protobuf`` (the only one the extra ships)
``OTEL_EXPORTER_OTLP_ENDPOINT``,   read by the OTLP/HTTP exporters (``/v1/traces`` and
``..._TRACES_ENDPOINT``, ``...``   ``/v1/metrics`` appended to the base endpoint), as are
``_HEADERS``, ``..._TIMEOUT``      headers, timeout, compression and certificates
``OTEL_TRACES_SAMPLER[_ARG]``      read by the SDK ``TracerProvider``
``OTEL_BSP_*``, ``OTEL_METRIC_``   read by the batch span processor and the periodic
``EXPORT_INTERVAL``                metric reader
``STALWART_SPAN_EXPORT``           ``auto`` (default), ``thread`` or ``process``: where
                                   OTLP spans are encoded and posted
                                   (``configure(export_from=)``)
=================================  ========================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, cast, final

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

from ..errors import ConfigurationError

__all__ = ["Providers", "configure"]


@final
@dataclass(frozen=True, slots=True)
class Providers:
    """What :func:`configure` installed (``None`` when ``OTEL_SDK_DISABLED`` is true)."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider


def _choice(var: str) -> str:
    value = (os.environ.get(var) or "otlp").strip().lower()
    if value not in ("otlp", "console", "none"):
        raise ConfigurationError(f"{var}={value!r}: stalwart supports otlp, console or none")
    return value


def _check_protocol() -> None:
    for var in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"):
        value = os.environ.get(var)
        if value and value.strip().lower() != "http/protobuf":
            raise ConfigurationError(
                f"{var}={value!r}: the otel extra exports OTLP over http/protobuf only")


SpanExport = Literal["auto", "thread", "process"]


def _where(export_from: SpanExport | None) -> Literal["thread", "process"]:
    value = export_from or (os.environ.get("STALWART_SPAN_EXPORT") or "auto").strip().lower()
    if value not in ("auto", "thread", "process"):
        raise ConfigurationError(
            f"STALWART_SPAN_EXPORT={value!r}: use auto (the default), thread or process")
    if value == "auto":
        return "process" if _cpus() > 1 else "thread"
    return cast(Literal["thread", "process"], value)


def _cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _span_exporter(export_from: Literal["thread", "process"]) -> SpanExporter | None:
    kind = _choice("OTEL_TRACES_EXPORTER")
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if export_from == "process":
        from ._sidecar import ProcessSpanExporter

        return ProcessSpanExporter()
    from ._otlp import OTLPSpanExporter  # the SDK's, with a faster encoder

    return OTLPSpanExporter()


def _metric_exporter() -> MetricExporter | None:
    kind = _choice("OTEL_METRICS_EXPORTER")
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()


def configure(*, span_exporter: SpanExporter | None = None,
              metric_reader: MetricReader | None = None, resource: Resource | None = None,
              set_global: bool = True, export_from: SpanExport | None = None,
              ) -> Providers | None:
    """Build SDK tracer and meter providers from the ``OTEL_*`` environment variables
    (see the module docstring) and, with ``set_global``, install them as OpenTelemetry's
    global providers, which ``Tracing()`` uses by default.

    Args:
        span_exporter: export spans here (batched) instead of what
            ``OTEL_TRACES_EXPORTER`` names.
        metric_reader: read metrics with this instead of a periodic reader exporting to
            what ``OTEL_METRICS_EXPORTER`` names.
        resource: the resource; default ``Resource.create()`` (``OTEL_SERVICE_NAME``...).
        set_global: install the providers globally (OpenTelemetry allows this once).
        export_from: ``"thread"`` (the SDK's way): OTLP spans are encoded and posted on
            the batch processor's thread; ``"process"``: by a child process
            (:class:`~stalwart.telemetry.ProcessSpanExporter`), which keeps that work
            off this process's GIL; ``"auto"``: process where this process may use more
            than one CPU, else thread. Default: ``STALWART_SPAN_EXPORT``, else auto.

    Returns:
        The providers, or ``None`` when ``OTEL_SDK_DISABLED`` is true.
    """
    if (os.environ.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true":
        return None
    _check_protocol()
    where = _where(export_from)
    resource = resource or Resource.create()
    tracer_provider = TracerProvider(resource=resource)
    exporter = span_exporter if span_exporter is not None else _span_exporter(where)
    if exporter is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    readers: list[MetricReader] = []
    if metric_reader is not None:
        readers.append(metric_reader)
    else:
        metric_exporter = _metric_exporter()
        if metric_exporter is not None:
            readers.append(PeriodicExportingMetricReader(metric_exporter))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
    return Providers(tracer_provider, meter_provider)

"""``Tracing``: how a runtime reports its runs to OpenTelemetry (the ``otel`` extra)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

from ..errors import ConfigurationError
from ._interceptor import CaptureContent, Interceptor

if TYPE_CHECKING:
    from .._runtime import Runtime

__all__ = ["Tracing"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Tracing:
    """Trace every run of a runtime with OpenTelemetry: ``Runtime(tracing=Tracing())``.

    One trace per run (the trace id is derived from the run id, so a run resumed after
    a crash continues its trace); a span for the run, each step that executes, each
    agent (``invoke_agent {name}``), each model call attempt (``chat {model}``) and each
    tool call attempt (``execute_tool {name}``), with the GenAI semantic-convention
    attributes. Steps replayed from the journal emit nothing. Metrics: token usage and
    operation duration histograms, retries, breaker state and bulkhead queues.

    Args:
        tracer_provider: an SDK ``TracerProvider``; default: the global one. When no
            global SDK provider is set, :func:`~stalwart.telemetry.configure` installs
            one from the standard ``OTEL_*`` environment variables (OTLP/HTTP export).
        meter_provider: the ``MeterProvider`` for metrics; default: the global one.
            ``None`` with ``metrics=False`` records no metrics.
        metrics: record metrics.
        capture_content: record prompts, completions and tool arguments/results on
            spans: ``False`` (default) never, ``True`` as text, ``"hash"`` only their
            SHA-256 digests. An :class:`~stalwart.Agent` may choose for itself.
    """

    tracer_provider: Any = None
    meter_provider: Any = None
    metrics: bool = True
    capture_content: CaptureContent = False

    def __post_init__(self) -> None:
        if self.capture_content not in (True, False, "hash"):
            raise ConfigurationError(
                f"Tracing.capture_content must be True, False or 'hash', "
                f"got {self.capture_content!r}")

    def bind(self, runtime: Runtime) -> Interceptor:
        """The interceptor that traces ``runtime``'s runs (the runtime calls this)."""
        try:
            from ._otel import OTelInterceptor
        except ImportError as exc:  # pragma: no cover - the extra is installed in tests
            raise ConfigurationError(
                "tracing needs the otel extra: pip install 'stalwart[otel]'") from exc
        return OTelInterceptor(self, runtime)

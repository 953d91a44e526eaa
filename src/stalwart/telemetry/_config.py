"""``Tracing``: how a runtime reports its runs to OpenTelemetry (the ``otel`` extra)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, final

from ..engine._interceptor import NOOP, BindInput, CaptureContent, Interceptor
from ..errors import ConfigurationError, _install_hint
from ._env import sdk_disabled

__all__ = ["StepSpans", "Tracing", "sdk_disabled"]

StepSpans = Literal["all", "calls", "none"]
"""Which steps get a span of their own (see :class:`Tracing`)."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Tracing:
    """Trace every run of a runtime with OpenTelemetry: ``Runtime(tracing=Tracing())``.

    One trace per run (the trace id is derived from the run id, so a run resumed after
    a crash continues its trace); a span for the run, each agent (``invoke_agent
    {name}``), each model call attempt (``chat {model}``), each tool call attempt
    (``execute_tool {name}``) and, as ``steps`` says, the steps that execute, with the
    GenAI semantic-convention attributes. Steps replayed from the journal emit nothing.
    Metrics: token usage and operation duration histograms, retries, breaker state and
    bulkhead queues. With ``OTEL_SDK_DISABLED=true`` in the environment, the runtime
    traces nothing and records no metrics.

    Args:
        tracer_provider: an SDK ``TracerProvider``; default: the global one. When no
            global SDK provider is set, :func:`~stalwart.telemetry.configure` installs
            one from the standard ``OTEL_*`` environment variables.
        meter_provider: the ``MeterProvider`` for metrics; default: the global one.
        metrics: record metrics.
        capture_content: record prompts, completions and tool arguments/results on
            spans: ``False`` (default) never, ``True`` as text, ``"hash"`` only their
            SHA-256 digests. An :class:`~stalwart.Agent` may choose for itself.
        steps: ``"all"`` (default): a span for every step that executes; ``"calls"``:
            only for steps that call a model or a tool or start a child run (plain
            ``ctx.step`` steps get none); ``"none"``: no step spans, model and tool
            calls hang under their agent's or run's span. Runs, agents, model calls and
            tool calls always get theirs.
        sampler: an SDK ``Sampler`` asked once per run, when it starts executing, with
            the run's trace id, parent and span name; a run it drops gets no spans
            (metrics still count it), and code inside it sees an unsampled span, so
            its own spans drop too under the SDK's parent-based samplers. ``None``:
            the provider's sampler decides (``OTEL_TRACES_SAMPLER`` for the provider
            :func:`~stalwart.telemetry.configure` builds).
    """

    tracer_provider: Any = None
    meter_provider: Any = None
    metrics: bool = True
    capture_content: CaptureContent = False
    steps: StepSpans = "all"
    sampler: Any = None

    def __post_init__(self) -> None:
        if self.capture_content not in (True, False, "hash"):
            raise ConfigurationError(
                f"Tracing.capture_content must be True, False or 'hash', "
                f"got {self.capture_content!r}")
        if self.steps not in ("all", "calls", "none"):
            raise ConfigurationError(
                f"Tracing.steps must be 'all', 'calls' or 'none', got {self.steps!r}")
        if self.sampler is not None and not callable(getattr(self.sampler, "should_sample",
                                                             None)):
            raise ConfigurationError(
                f"Tracing.sampler must be an OpenTelemetry SDK Sampler, got {self.sampler!r}")

    def bind(self, input: BindInput, /) -> Interceptor:
        """The interceptor that traces the runs of the runtime ``input`` describes (the
        runtime calls this once); the no-op one when ``OTEL_SDK_DISABLED`` is true."""
        if sdk_disabled():
            return NOOP
        try:
            from ._otel import OTelInterceptor
        except ImportError as exc:  # pragma: no cover - the extra is installed in tests
            raise ConfigurationError(
                f"tracing needs the otel extra: {_install_hint('otel')}") from exc
        return OTelInterceptor(self, input)

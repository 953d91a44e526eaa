"""Finished spans built directly, when going through the SDK's ``Span`` would change nothing.

A trivial step costs ~80 us, and the SDK's span path adds several times what tracing may
add to it. ``start_span`` runs the sampler and builds a ``Span`` with a lock,
``BoundedAttributes`` and ``BoundedList``s, and ``end`` calls the processors' hooks and
copies the span into a ``ReadableSpan``. When the provider is set up so that none of
that can change what its processors receive, a span is gathered in a
:class:`DirectSpan` (a dict of attributes, a list of events). At its end it goes to the
provider's span processor as the ``ReadableSpan`` the SDK would have built, with the same
context, parent, kind, attributes, events, status, times, resource and scope. That holds
when (checked by :meth:`SpanSink.direct` for every span, since processors can be added
at any time):

- the sampler is ``ALWAYS_ON``, or ``ParentBased`` with ``ALWAYS_ON`` for roots and for
  sampled local parents (the SDK's default, ``parentbased_always_on``). Every stalwart
  span is then recorded and sampled, with no sampler attributes, and its trace state is
  its parent's (stalwart's parents have none). Or the sampler decides a whole trace from
  its id (``traceidratio``, ``parentbased_traceidratio``, ``parentbased_always_off``):
  :meth:`SpanSink.sampled` then decides once per run, and a sampled run's spans are all
  recorded and sampled as above, while a dropped run makes no span at all. Any other
  sampler gets the SDK path and decides for itself;
- every span processor's ``on_start`` and ``_on_ending`` are the SDK's no-ops (its
  ``SimpleSpanProcessor`` and ``BatchSpanProcessor``, or any processor that overrides
  neither). No processor could see the span before it ends;
- the tracer is enabled and the SDK's own span metrics
  (``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``) are off.

Span limits are applied as the SDK applies them, with ``BoundedAttributes`` and
``BoundedList``, whenever they could cut something. Attribute values other than plain
``str``/``bool``/``int``/``float`` are cleaned by ``BoundedAttributes`` too.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from time import time_ns
from typing import Any, Protocol, final

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util.types import AnyValue

try:
    from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics as _NoMetrics
except ImportError:  # pragma: no cover - an SDK older than its own span metrics
    class _NoMetrics:  # type: ignore[no-redef]
        """An SDK without span metrics records none."""

_NO_METRICS = _NoMetrics()

__all__ = ["DirectSpan", "EndedSpan", "LazySpan", "SpanLike", "SpanSink", "SpanSource",
           "lazy_step"]

log = logging.getLogger("stalwart.telemetry")

_PLAIN = frozenset({str, bool, int, float})
_UNSET = Status(StatusCode.UNSET)
_NOOP_ON_START = frozenset({SpanProcessor.on_start, SimpleSpanProcessor.on_start,
                            BatchSpanProcessor.on_start})
# Older SDKs have no ``_on_ending`` hook (None): nothing to skip there.
_NOOP_ON_ENDING = frozenset({getattr(cls, "_on_ending", None) for cls in (
    SpanProcessor, SimpleSpanProcessor, BatchSpanProcessor)})


class SpanLike(Protocol):
    """What the interceptor does with a span: the SDK's ``Span`` or a :class:`DirectSpan`."""

    def get_span_context(self) -> SpanContext: ...

    def set_attribute(self, key: str, value: AnyValue) -> None: ...

    def set_attributes(self, attributes: Mapping[str, AnyValue]) -> None: ...

    def add_event(self, name: str, attributes: Mapping[str, AnyValue] | None = None,
                  timestamp: int | None = None) -> None: ...

    def set_status(self, status: Status, description: str | None = None) -> None: ...

    def end(self, end_time: int | None = None) -> None: ...


def _always_on(sampler: Sampler | None) -> bool:
    return type(sampler) is StaticSampler and sampler._decision is Decision.RECORD_AND_SAMPLE


def _samples_everything(sampler: Sampler) -> bool:
    if type(sampler) is ParentBased:
        return _always_on(sampler._root) and _always_on(sampler._local_parent_sampled)
    return _always_on(sampler)


def _per_trace(sampler: Sampler) -> Sampler | None:
    """The sampler that decides a whole trace from its id alone, if ``sampler`` is one of
    the SDK's that do: ``traceidratio``, or ``parentbased_*`` over a ratio or static
    root, whose spans under a local parent follow that parent. ``None`` otherwise."""
    if type(sampler) is TraceIdRatioBased:
        return sampler
    if type(sampler) in (ParentBased, ParentBasedTraceIdRatio):
        root: Sampler = getattr(sampler, "_root")  # noqa: B009 - the SDK's own field
        sampled = getattr(sampler, "_local_parent_sampled")  # noqa: B009
        not_sampled = getattr(sampler, "_local_parent_not_sampled")  # noqa: B009
        follows = (_always_on(sampled) and type(not_sampled) is StaticSampler
                   and not_sampled._decision is Decision.DROP)
        if follows and type(root) in (TraceIdRatioBased, StaticSampler):
            return root
    return None


def _emitter(processors: Sequence[SpanProcessor] | None,
             ) -> Callable[[ReadableSpan], None] | None:
    """Where a sampled span goes when every processor is the SDK's
    ``BatchSpanProcessor``: straight into their queues. Its ``on_end`` only checks that
    the span is sampled (a direct span always is) before queueing it, and that check
    reads the span's context, which a ``LazySpan`` computes only when read (a hash):
    skipping it keeps that off the event loop. ``None`` for any other processor (or an
    SDK whose batch processor is built otherwise): call ``on_end``."""
    if not processors:
        return None
    queues: list[Callable[[ReadableSpan], None]] = []
    for processor in processors:
        inner = getattr(processor, "_batch_processor", None)
        if type(processor) is not BatchSpanProcessor or not callable(
                getattr(inner, "emit", None)):
            return None
        queues.append(_queue_of(inner))
    if len(queues) == 1:
        return queues[0]

    def emit_all(span: ReadableSpan) -> None:
        for emit in queues:
            emit(span)

    return emit_all


_PID = [os.getpid()]
"""This process's id, as the batch processor's fork check compares it (kept current by
a fork hook: ``os.getpid()`` is a system call, ~0.25 us, and it would be made a span)."""
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def _queue_of(inner: Any) -> Callable[[ReadableSpan], None]:
    """The SDK batch processor's ``emit`` (``inner``: a ``BatchSpanProcessor``'s
    ``_batch_processor``), as it runs when none of its checks has anything to do: the
    span goes to the left of its queue, and a full batch wakes its worker. Whenever a
    check could act (it was shut down; this is a forked child it has not reset for; its
    queue is full, so it drops a span and counts the drop) the SDK's own ``emit`` runs.
    What the two do is compared by test_span_queue. An SDK whose batch processor keeps
    other fields gets its ``emit`` as it is."""
    fields = ("_queue", "_shutdown", "_pid", "_max_queue_size", "_max_export_batch_size",
              "_worker_awaken")
    if not all(hasattr(inner, name) for name in fields) or not (
            isinstance(inner._queue, deque) and isinstance(inner._worker_awaken, threading.Event)
            and isinstance(inner._max_queue_size, int)):
        return inner.emit  # type: ignore[no-any-return]
    sdk_emit = inner.emit
    pid = _PID

    def emit(span: ReadableSpan) -> None:
        queue = inner._queue  # a new one after a fork
        if inner._shutdown or inner._pid != pid[0] or len(queue) >= inner._max_queue_size:
            sdk_emit(span)
            return
        queue.appendleft(span)
        if len(queue) >= inner._max_export_batch_size and not inner._worker_awaken.is_set():
            inner._worker_awaken.set()

    return emit


@final
class SpanSink:
    """Where direct spans go: the span processor of one SDK tracer (see the module doc)."""

    __slots__ = ("_checked", "_emit", "_ok", "_processors_ok", "_root", "info", "limits",
                 "plain_max",
                 "processor", "resource", "scope", "tracer")

    def __init__(self, tracer: SdkTracer) -> None:
        self.tracer = tracer
        self.processor = tracer.span_processor
        self.resource = tracer.resource
        self.scope = getattr(tracer, "_instrumentation_scope", None)
        limits = getattr(tracer, "_span_limits", None)
        self.limits = limits if isinstance(limits, SpanLimits) else SpanLimits()
        self.info = tracer.instrumentation_info
        # Up to this many plain attributes, no limit can cut anything (-1: a length limit).
        most = self.limits.max_span_attributes
        self.plain_max: int = (-1 if self.limits.max_span_attribute_length is not None
                               else sys.maxsize if most is None else most)
        self._ok = (self.scope is not None and isinstance(limits, SpanLimits)
                    and isinstance(getattr(tracer, "_tracer_metrics", _NO_METRICS), _NoMetrics))
        self._root: Sampler | None = None
        if not _samples_everything(tracer.sampler):
            self._root = _per_trace(tracer.sampler)
            if self._root is None:
                self._ok = False  # any other sampler decides every span itself
        self._checked: object = None
        self._processors_ok = False
        self._emit: Callable[[ReadableSpan], None] = self.processor.on_end

    @property
    def samples_all(self) -> bool:
        """Whether every trace is sampled (no need to look at a trace's id)."""
        return self._ok and self._root is None

    def sampled(self, trace_id: int) -> bool | None:
        """Whether the trace ``trace_id`` (a run's) is sampled, decided once for all its
        spans as the sampler would decide each of them; ``None`` when the sampler must
        see every span (the SDK path)."""
        if not self._ok:
            return None
        if self._root is None:
            return True
        return self._root.should_sample(
            None, trace_id, "").decision is Decision.RECORD_AND_SAMPLE

    def fields(self, name: str, context: SpanContext, parent: SpanContext | None,
               kind: SpanKind, attributes: Mapping[str, Any], events: list[Event] | None,
               status: Status, start: int, end: int) -> tuple[Any, ...]:
        """``ReadableSpan``'s arguments for a span of this sink's tracer, its limits
        applied to ``attributes`` and ``events`` as the SDK's ``Span`` applies them."""
        if len(attributes) > self.plain_max or not _PLAIN.issuperset(
                map(type, attributes.values())):
            attributes = BoundedAttributes(
                self.limits.max_span_attributes, attributes, immutable=True,
                max_value_len=self.limits.max_span_attribute_length)
        bounded: Any = ()
        if events is not None:
            bounded = BoundedList(self.limits.max_events)
            for event in events:
                bounded.append(event)
        # Positional (cheaper): ReadableSpan's parameters in their order, unchanged since
        # SDK 1.11 added instrumentation_scope; test_direct_spans checks every field.
        return (name, context, parent, self.resource, attributes, bounded, (), kind,
                self.info, status, start, end, self.scope)

    def emit(self, span: ReadableSpan) -> None:
        """Hand an ended direct span to the processors (those of now: one may have been
        added since the span started, as the SDK's ``Span`` would hand it too)."""
        if getattr(self.processor, "_span_processors", None) is not self._checked:
            self.direct()
        self._emit(span)

    def direct(self) -> bool:
        """Whether a span starting now may be a :class:`DirectSpan`."""
        if not self._ok:
            return False
        processors = getattr(self.processor, "_span_processors", None)
        if processors is not self._checked:  # a processor was added (or first call)
            self._checked = processors
            self._processors_ok = processors is not None and all(
                type(p).on_start in _NOOP_ON_START
                and getattr(type(p), "_on_ending", None) in _NOOP_ON_ENDING
                for p in processors)
            self._emit = _emitter(processors) or self.processor.on_end
        if not self._processors_ok:
            return False
        config = getattr(self.tracer, "_tracer_config", None)  # None: an SDK without it
        return config is None or config.is_enabled is True


@final
class DirectSpan:
    """A span that becomes a ``ReadableSpan`` for the sink's processor when it ends.

    It takes ``attributes`` over (the caller must not use that dict afterwards)."""

    __slots__ = ("_attributes", "_context", "_ended", "_events", "_kind", "_name",
                 "_parent", "_sink", "_start", "_status")

    def __init__(self, sink: SpanSink, name: str, context: SpanContext,
                 parent: SpanContext | None, kind: SpanKind,
                 attributes: dict[str, Any] | None, start_time: int) -> None:
        self._sink = sink
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes: dict[str, Any] = attributes if attributes is not None else {}
        self._events: list[Event] | None = None
        self._status = _UNSET
        self._start = start_time
        self._ended = False

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return not self._ended

    def set_attribute(self, key: str, value: AnyValue) -> None:
        if self._ended:
            log.warning("Setting attribute on ended span.")
            return
        self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AnyValue]) -> None:
        if self._ended:
            log.warning("Setting attribute on ended span.")
            return
        self._attributes.update(attributes)

    def add_event(self, name: str, attributes: Mapping[str, AnyValue] | None = None,
                  timestamp: int | None = None) -> None:
        if self._ended:
            log.warning("Calling add_event on an ended span.")
            return
        limits = self._sink.limits
        event = Event(name, BoundedAttributes(
            limits.max_event_attributes, attributes,
            max_value_len=limits.max_attribute_length, immutable=True), timestamp)
        if self._events is None:
            self._events = []
        self._events.append(event)

    def set_status(self, status: Status, description: str | None = None) -> None:
        # As the SDK's Span: a status of OK is final, UNSET changes nothing.
        if self._ended:
            log.warning("Calling set_status on an ended span.")
            return
        if self._status.status_code is StatusCode.OK or status.status_code is StatusCode.UNSET:
            return
        self._status = status

    def end(self, end_time: int | None = None) -> None:
        if self._ended:
            log.warning("Calling end() on an ended span.")
            return
        self._ended = True
        self._sink.emit(EndedSpan(self, end_time if end_time is not None else time_ns()))

    def readable(self, end_time: int) -> tuple[Any, ...]:
        """``ReadableSpan``'s arguments for this span, ended at ``end_time``."""
        return self._sink.fields(self._name, self._context, self._parent, self._kind,
                                 self._attributes, self._events, self._status, self._start,
                                 end_time)


class EndedSpan(ReadableSpan):
    """The ``ReadableSpan`` of an ended :class:`DirectSpan`, filled in when first read.

    A batch span processor only looks at a span's context when it is handed the span;
    its exporter reads the rest later, on the processor's thread. So only ``_context`` is
    set here, on the event loop, and the first read of anything else builds the fields
    the SDK's constructor would have set (from the ended ``DirectSpan``, which nothing
    changes any more): the work moves off the loop, the span read is the same."""

    def __init__(self, span: DirectSpan, end_time: int) -> None:
        self._context = span._context
        self._pending: Any = span
        self._pending_end = end_time

    def _readable(self) -> tuple[Any, ...]:
        """``ReadableSpan``'s arguments, from what is pending."""
        span: DirectSpan = self._pending
        return span.readable(self._pending_end)

    def fields(self) -> tuple[Any, ...] | None:
        """``ReadableSpan``'s arguments for this span, without filling it in; ``None``
        once it was filled in (read its properties then)."""
        return None if self.__dict__.get("_pending") is None else self._readable()

    def __getattr__(self, name: str) -> Any:
        # Only reached for what is not set yet: the SDK's fields, on their first read.
        if (self.__dict__.get("_pending") is None or not name.startswith("_")
                or name.startswith("__")):
            raise AttributeError(name)
        ReadableSpan.__init__(self, *self._readable())
        self._pending = None
        return object.__getattribute__(self, name)


class SpanSource(Protocol):
    """What a :class:`LazySpan` is built from when first read (a run's state, which
    knows its ids), given what the span stands for (``what``, a tuple it chose)."""

    def span_context(self, what: tuple[Any, ...]) -> SpanContext: ...

    def span_fields(self, what: tuple[Any, ...]) -> tuple[Any, ...]: ...

    def span_parts(self, what: tuple[Any, ...]) -> tuple[Any, ...] | None: ...

    def span_encoded(self, what: tuple[Any, ...]) -> tuple[Any, Any, bytes] | None: ...

    def span_packed(self, what: tuple[Any, ...]) -> tuple[Any, ...]: ...

    def packable(self) -> tuple[Any, ...] | None: ...


@final
class LazySpan(EndedSpan):
    """The ``ReadableSpan`` of a span that ended before anything needed it (a plain step:
    no events, no nested call, no policy acted; a run's own span), made from what the
    event loop knew when it ended: ``what`` (ids, name, times, outcome), read by its
    ``source``. Everything else, its context included (ids are hashes), is computed on
    first read, on the exporter's side: the loop pays for one small object a span."""

    # A plain step's fields, set by lazy_step instead of ``_what``.
    _step_id: str
    _step_name: str
    _parent_id: int | None
    _step_start: int
    _step_end: int
    _step_error: str | None
    _what: tuple[Any, ...] | None = None
    """``what``, unless this is a plain step's span (see :meth:`what`)."""

    def __init__(self, source: SpanSource, what: tuple[Any, ...]) -> None:
        self._pending = source
        self._what = what

    def what(self) -> tuple[Any, ...]:
        """What the span stands for, as its source reads it."""
        what = self._what
        if what is None:  # a plain step's (lazy_step)
            return ("step", self._step_id, self._step_name, self._parent_id,
                    self._step_start, self._step_end, self._step_error)
        return what

    @property
    def context(self) -> SpanContext:
        """The span's context (only it is computed, when the span is not filled in)."""
        context: SpanContext | None = self.__dict__.get("_context")
        if context is None:
            context = self._context = self._pending.span_context(self.what())
        return context

    def get_span_context(self) -> SpanContext:
        return self.context

    def _readable(self) -> tuple[Any, ...]:
        source: SpanSource = self._pending
        return source.span_fields(self.what())

    # ``_pending`` is set by both constructors, and is ``None`` once the span is filled
    # in: read as an attribute (``__dict__`` would build the instance's dict).

    def pending(self) -> tuple[SpanSource, tuple[Any, ...]] | None:
        """Its source and ``what`` while it is not filled in, else ``None``."""
        source: SpanSource | None = self._pending
        return None if source is None else (source, self.what())

    def parts(self) -> tuple[Any, ...] | None:
        """The span as plain values, for an encoder, without filling it in: ``(name,
        trace id, span id, parent span id or None, start, end, attributes, (status
        code value, description), resource, scope)``; its kind is ``INTERNAL``, its
        parent local, it has no events, links or trace state, nothing was dropped.
        ``None`` once filled in, or when span limits could cut its attributes (read
        :meth:`fields` then)."""
        source: SpanSource | None = self._pending
        return None if source is None else source.span_parts(self.what())

    def encoded(self) -> tuple[Any, Any, bytes] | None:
        """``(resource, scope, the OTLP Span message)`` for a plain step's span, encoded
        by its source without filling it in; ``None`` for any other, or once filled in
        (read :meth:`parts` then)."""
        source: SpanSource | None = self._pending
        return None if source is None else source.span_encoded(self.what())


_new_span = object.__new__


def lazy_step(source: SpanSource, step_id: str, name: str, parent_id: int | None,
              start: int, end: int, error: str | None) -> LazySpan:
    """The ``LazySpan`` of a plain step: its ``what`` is ``("step", step_id, name,
    parent_id, start, end, error)``, but the fields are kept on the span itself, and the
    tuple is built only when an exporter asks for it (:meth:`LazySpan.what`).

    Why: every object that outlives the step counts towards the garbage collector's
    next collection (CPython collects its youngest generation after 700 more objects
    than were freed), and a span outlives it in the processor's queue (in an in-memory
    exporter, for good). One object a span instead of two makes collections come less
    often. In W2 the collector's work was about a quarter of the instructions tracing
    added to the loop (callgrind), and more of its time (timed with gc.callbacks)."""
    span: LazySpan = _new_span(LazySpan)
    span._pending = source
    span._step_id = step_id
    span._step_name = name
    span._parent_id = parent_id
    span._step_start = start
    span._step_end = end
    span._step_error = error
    return span

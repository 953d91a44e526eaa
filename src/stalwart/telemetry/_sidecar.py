"""Span export from a helper process: encoding and HTTP off this process's GIL.

Why our own: OpenTelemetry's batch span processor exports on a thread of the traced
process. In Python that thread shares the GIL with the event loop, so every microsecond
it spends turning spans into OTLP protobuf and posting them over HTTP (~7-10 us per span
even with our encoder, see ``bench/bench_tracing.py``) is taken from the runs being
traced. :class:`ProcessSpanExporter` is a ``SpanExporter`` for that processor that only
copies each span's fields into plain tuples (for stalwart's lazy spans, the few values
they were made from) and writes them, pickled, to a pipe (~1.5 us per span in all). A
child process (``python -m stalwart.telemetry._sidecar``) encodes the tuples as they are
(``_otlp.encode_packed``, ~2 us per span; rebuilding ``ReadableSpan``\\ s first would
triple that) and posts them with an
:class:`~stalwart.telemetry._otlp.OTLPSpanExporter` configured from the same
``OTEL_EXPORTER_OTLP_*`` variables (it inherits the environment).
No collector sidecar or extra service is needed, and the semantics stay the SDK's: the
batch processor still batches, bounds its queue and drops when full.

``export`` returns when the child has exported the batch, with its result, so a
provider's ``force_flush`` still means "exported"; the waiting is a blocked read on the
processor's thread, which holds no GIL. A batch handed to the child before this process
is SIGKILLed is still exported (the child finishes it, then sees the pipe close).

Protocol (stdin of the child): frames of a 4-byte big-endian length and a pickle of
``("config", kwargs, niceness)`` (first), ``("spans", new resources, new scopes, new
runs, spans)``, ``("flush",)`` or ``("stop",)``; the child answers each with one line on its stdout:
``ok`` or ``failed``. Resources, scopes and runs are sent once, numbered, with the first
batch that refers to them (``_Tables``); spans refer to them by number. A span stalwart
made without the SDK's ``Span`` (a ``LazySpan``: a plain step's, a run's) travels as
``(run number, the few values it was made from)``, and the child computes its ids and
attributes itself (``_expand``), as the traced process would have; a plain step's it
encodes straight to bytes with its run's ``PlainSpans``, as the traced process's encoder
does. The constructor starts the child and does not wait for it: its imports (~0.5-1 s)
overlap the application's start, and the first export reads its answer to ``config``.
If the child dies, the next export starts a new one (the batch in flight is reported as
failed). If no child can run here (spawning fails, or the interpreter will not run it),
export goes on in this process, on the processor's thread, with a warning: spans are
not lost over where they are encoded.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Any, cast, final

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from ._ids import RunIds, trace_id_for
from ._otlp import PlainSpans
from ._spans import EndedSpan, LazySpan, SpanSource
from ._steps import run_span, step_span

__all__ = ["ProcessSpanExporter"]

log = logging.getLogger("stalwart.telemetry")

_LENGTH = struct.Struct(">I")
_START_WAIT_MILLIS = 30_000
_EXPORT_WAIT_MILLIS = 60_000
"""How long an export waits for the child's answer (its HTTP timeout is 10 s)."""
_KINDS = {kind.value: kind for kind in SpanKind}
_INTERNAL = SpanKind.INTERNAL.value
_COMPACT_LENGTH = 2
"""The length of a ``LazySpan``'s packed tuple, ``(run index, what)`` (any other's is 15)."""
_SAMPLED = int(TraceFlags.SAMPLED)
_CODES = {code.value: code for code in StatusCode}


def _context(ctx: SpanContext | None) -> tuple[Any, ...] | None:
    if ctx is None:
        return None
    # A SpanContext is the tuple (trace_id, span_id, is_remote, trace_flags, trace_state,
    # is_valid): read at once (test_export_process checks it against the properties).
    trace_id, span_id, remote, flags, state = ctx[:5]
    return (trace_id, span_id, remote, int(flags), tuple(state.items()) if state else ())


def _attrs(attributes: Any) -> tuple[dict[str, Any], int]:
    # An empty BoundedAttributes may still count dropped ones (a limit of 0).
    if attributes is None:
        return {}, 0
    return dict(attributes), int(getattr(attributes, "dropped", 0) or 0)


_KEPT = 8192
"""How many resources, scopes and runs the child is sent once and then referred to by
number (each kind, oldest forgotten first; both sides keep the same ones)."""


@final
class _Tables:
    """Resources, scopes and runs the child knows: each is sent once, with the first
    batch that refers to it, then referred to by its number. A batch of 512 spans holds
    spans of hundreds of runs, and a run's spans arrive over several batches, so runs are
    kept from batch to batch (up to ``_KEPT`` of each kind, in the order they were
    numbered, as the child keeps them: a number in use here is known there). A new child
    knows nothing: the exporter starts a new ``_Tables`` with it."""

    def __init__(self) -> None:
        self._resources: dict[int, tuple[Resource, int]] = {}  # id -> (kept alive, number)
        self._scopes: dict[int, tuple[InstrumentationScope | None, int]] = {}
        self._runs: dict[SpanSource, int | None] = {}
        self._numbers = [0, 0, 0]
        self.resources: list[tuple[int, tuple[dict[str, Any], str]]] = []
        """The resources numbered since the last :meth:`take`, to send: ``(number,
        (attributes, schema URL))``; likewise ``scopes`` and ``runs``."""
        self.scopes: list[tuple[int, tuple[str, str | None, str | None, dict[str, Any]]
                                | None]] = []
        self.runs: list[tuple[int, tuple[str, int, int | None, int, int]]] = []

    def take(self) -> tuple[list[Any], list[Any], list[Any]]:
        """What was numbered since the last call (it is sent with the next batch)."""
        taken = (self.resources, self.scopes, self.runs)
        self.resources, self.scopes, self.runs = [], [], []
        return taken

    def _number(self, kind: int, table: dict[Any, Any]) -> int:
        number = self._numbers[kind]
        self._numbers[kind] = number + 1
        if len(table) >= _KEPT:
            del table[next(iter(table))]
        return number

    def run(self, source: SpanSource) -> int | None:
        """The number of the run whose lazy spans (``LazySpan``) the child builds from
        ``(run id, redrive, trace id or None, resource number, scope number)``; ``None``
        when the child may not (span limits could cut a step's attributes)."""
        runs = self._runs
        if source in runs:
            return runs[source]
        packable = source.packable()
        found = None
        if packable is not None:
            run_id, redrive, trace_id, resource, scope = packable
            entry = (run_id, redrive, trace_id, self.resource(resource), self.scope(scope))
            found = self._number(2, runs)
            self.runs.append((found, entry))
        runs[source] = found
        return found

    def resource(self, resource: Resource) -> int:
        found = self._resources.get(id(resource))
        if found is not None:
            return found[1]
        number = self._number(0, self._resources)
        self._resources[id(resource)] = (resource, number)
        self.resources.append((number, (dict(resource.attributes), resource.schema_url)))
        return number

    def scope(self, scope: InstrumentationScope | None) -> int:
        found = self._scopes.get(id(scope))
        if found is not None:
            return found[1]
        number = self._number(1, self._scopes)
        self._scopes[id(scope)] = (scope, number)
        self.scopes.append((number, None if scope is None else (
            scope.name, scope.version, scope.schema_url, dict(scope.attributes or {}))))
        return number


def _pack(span: ReadableSpan, tables: _Tables) -> tuple[Any, ...]:
    """A span's fields as plain values (an ended direct span's without filling it in);
    a plain step's as the few values the child builds its span from (see ``_expand``)."""
    pending = span.pending() if type(span) is LazySpan else None
    if pending is not None:  # not filled in
        source, what = pending
        run = tables.run(source)
        if run is not None:
            return (run, source.span_packed(what))
        parts = source.span_parts(what)
        if parts is not None:
            (name, trace_id, span_id, parent_id, start, end, attributes, status, resource,
             scope) = parts
            return (name, (trace_id, span_id, False, _SAMPLED, ()),
                    None if parent_id is None else (trace_id, parent_id, False, _SAMPLED, ()),
                    _INTERNAL, start, end, attributes, 0, None, 0, None, 0, status,
                    tables.resource(resource), tables.scope(scope))
    if isinstance(span, EndedSpan):
        fields = span.fields()
        if fields is not None:
            (name, context, parent, resource, attributes, events, links, kind, _info,
             status, start, end, scope) = fields
            if type(attributes) is dict and not events and not links:
                # The usual step span: its attributes dict is final once the span ended
                # (no copy), and there is nothing else to convert.
                return (name, _context(context), _context(parent), kind.value, start, end,
                        attributes, 0, None, 0, None, 0,
                        None if status is None else (status.status_code.value,
                                                     status.description),
                        tables.resource(resource), tables.scope(scope))
            return _pack_fields(name, context, parent, resource, attributes, events, links,
                                kind, status, start, end, scope, 0, 0, tables)
    return _pack_fields(span.name, span.context, span.parent, span.resource,
                        span.attributes, span.events, span.links, span.kind, span.status,
                        span.start_time, span.end_time, span.instrumentation_scope,
                        span.dropped_events, span.dropped_links, tables,
                        dropped_attributes=span.dropped_attributes)


def _pack_fields(name: str, context: SpanContext | None, parent: SpanContext | None,
                 resource: Resource, attributes: Any, events: Sequence[Event],
                 links: Sequence[Link], kind: SpanKind, status: Status | None,
                 start: int | None, end: int | None, scope: InstrumentationScope | None,
                 dropped_events: int, dropped_links: int, tables: _Tables,
                 dropped_attributes: int | None = None) -> tuple[Any, ...]:
    attrs, dropped = _attrs(attributes)
    if dropped_attributes is not None:
        dropped = dropped_attributes
    return (
        name, _context(context), _context(parent), kind.value, start, end, attrs, dropped,
        [(e.name, e.timestamp, *_attrs(e.attributes)) for e in events] if events else None,
        dropped_events or int(getattr(events, "dropped", 0) or 0),
        [(_context(link.context), *_attrs(link.attributes)) for link in links]
        if links else None,
        dropped_links,
        None if status is None else (status.status_code.value, status.description),
        tables.resource(resource), tables.scope(scope))


@final
class ProcessSpanExporter(SpanExporter):
    """Exports spans from a child process (see the module docstring).

    Args:
        exporter_args: keyword arguments for the child's ``OTLPSpanExporter`` (endpoint,
            headers, timeout, compression...); by default it reads ``OTEL_*`` like the
            SDK's exporter.
        python: the interpreter to run the child with (default: this one).
        niceness: how much lower than this process's the child's CPU priority is
            (``os.nice``; default 10, 0 to keep it): export is background work, so
            where the CPUs are busy the runs it traces get them first.
    """

    def __init__(self, *, python: str | None = None, niceness: int = 10,
                 **exporter_args: Any) -> None:
        self._python = python or sys.executable
        self._niceness = niceness
        self._args = exporter_args
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._starting = False
        """The child was sent its ``config`` and has not answered it yet."""
        self._local: SpanExporter | None = None
        """This process's OTLP exporter, made when a batch must go out from here: while
        the child is still starting, or for good when no child can run here."""
        self._no_child = False
        self._refused = False
        """The child could not build an exporter from ``exporter_args``."""
        self._tables = _Tables()
        self._pid = os.getpid()
        self._shutdown = False
        with self._lock:  # started now: it imports for ~1 s while the application starts
            self._start()

    def _start(self) -> subprocess.Popen[bytes] | None:
        """The child, started (without waiting for it) if there is none alive; ``None``
        when it cannot be (export then goes on in this process)."""
        child = self._child
        if child is not None and child.poll() is None:
            return child
        if child is not None and self._starting:
            # It exited before answering its config: whether it ever started (then it
            # crashed: start another) or not (no child can run here) is in its answer.
            self._ready()
            if self._child is None or self._refused:
                return None
        if child is not None:
            log.warning("span export process exited (%s); starting another", child.returncode)
            _close(child)
            self._child = None
        if self._no_child:
            return None
        self._tables = _Tables()  # what the last child knew, the new one does not
        try:
            child = subprocess.Popen(
                [self._python, "-m", "stalwart.telemetry._sidecar"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=os.environ.copy(),
                close_fds=True)
        except OSError as error:
            self._export_here(f"cannot start it: {error}")
            return None
        self._child = child
        # It answers once its exporter is built: the first export reads that answer. A
        # child that is gone already cannot take the config: its answer (none) says so.
        self._starting = True
        self._send(("config", self._args, self._niceness))
        return child

    def _export_here(self, why: str) -> None:
        """No child can export for this process: export on the processor's thread, as
        ``export_from="thread"`` does, from now on."""
        log.warning("span export process: %s; exporting spans in this process instead", why)
        self._no_child = True

    def _here(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export ``spans`` from this process, on the calling (processor's) thread."""
        if self._local is None:
            from ._otlp import OTLPSpanExporter

            try:
                self._local = OTLPSpanExporter(**self._args)
            except Exception as error:  # arguments no exporter takes
                log.error("span export: cannot build the OTLP exporter: %s", error)
                self._refused = True
                return SpanExportResult.FAILURE
        return self._local.export(spans)

    def _send(self, message: tuple[Any, ...]) -> bool:
        child = self._child
        if child is None or child.stdin is None:
            return False
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            child.stdin.write(_LENGTH.pack(len(data)) + data)
            child.stdin.flush()
        except (OSError, ValueError):
            return False
        return True

    def _answer(self, timeout_millis: float) -> bytes:
        """The child's next one-line answer (b"": none came in time, or it died)."""
        child = self._child
        if child is None or child.stdout is None:
            return b""
        ready, _, _ = select.select([child.stdout], [], [], timeout_millis / 1000)
        return child.stdout.readline() if ready else b""

    def _ready(self) -> bool:
        """Whether the child takes this batch: it answered its ``config`` (read now if
        it has come). Not while it is still importing: batches go out from this process
        meanwhile, rather than wait and let the processor's queue fill (and drop) at a
        busy start. A child that cannot even start Python's imports here (an
        interpreter that is no ``python``, a sandbox) hands export to this process."""
        if not self._starting:
            return True
        child = self._child
        if child is None or child.stdout is None:
            return False
        if child.poll() is None and not select.select([child.stdout], [], [], 0)[0]:
            return False  # still starting
        self._starting = False
        answer = child.stdout.readline()  # b"": it exited without answering
        if answer == b"ok\n":
            return True
        if answer == b"failed\n":  # its exporter refused the arguments: so would ours
            log.error("span export process: cannot build the OTLP exporter (see above); "
                      "no span will be exported")
            self._refused = True
            return False
        child.kill()
        child.wait()
        _close(child)
        self._child = None
        self._export_here("it did not start")
        return False

    def started(self, timeout: float = 30.0) -> bool:
        """Wait up to ``timeout`` seconds for the child to take batches (until then, and
        where no child can run, batches are exported from this process); whether it
        does now."""
        self._check_fork()
        with self._lock:
            child = None if self._shutdown else self._start()
            if child is None or child.stdout is None:
                return False
            if self._starting:
                select.select([child.stdout], [], [], timeout)
            return self._ready()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            log.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        if self._refused:
            return SpanExportResult.FAILURE
        self._check_fork()
        with self._lock:
            if self._start() is not None and self._ready():
                tables = self._tables
                packed = [_pack(span, tables) for span in spans]
                answer = self._ask(("spans", *tables.take(), packed), _EXPORT_WAIT_MILLIS)
            elif not self._refused:  # the child is starting, or none can run here
                return self._here(spans)
            else:
                answer = b""
        if answer != b"ok\n":
            log.error("span export process: a batch of %d spans was not exported (%s)",
                      len(spans), answer.decode(errors="replace").strip() or "no answer")
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            self._forked()

    def _forked(self) -> None:
        """This is a forked copy of the process that started the child (a pre-forking
        server): that child and its pipes are the other process's, and the lock may have
        been held by a thread that was not forked. Close this copy's ends of the pipes
        (so the child sees the end of its own parent's) and start a child of our own."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        inherited, self._child = self._child, None
        if inherited is not None:
            _close(inherited)

    def _ask(self, message: tuple[Any, ...], timeout_millis: float) -> bytes:
        """Send ``message`` and wait for the child's one-line answer (b"": none came)."""
        child = self._child
        if child is None or child.poll() is not None or not self._send(message):
            return b""
        return self._answer(timeout_millis)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing waits here: each ``export`` returns once the child has exported."""
        return not self._shutdown

    def shutdown(self) -> None:
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            if self._local is not None:
                self._local.shutdown()
            child = self._child
            if child is None:
                return
            if self._starting:  # never exported: its answer to config comes first
                self._starting = False
                self._answer(_START_WAIT_MILLIS)
            self._ask(("stop",), _EXPORT_WAIT_MILLIS)
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            _close(child)


def _close(child: subprocess.Popen[bytes]) -> None:
    for pipe in (child.stdin, child.stdout):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass  # a broken pipe to a dead child: nothing left to flush


# -- the child process ----------------------------------------------------------------


def _unpack_context(value: tuple[Any, ...] | None) -> SpanContext | None:
    if value is None:
        return None
    trace_id, span_id, remote, flags, state = value
    return SpanContext(trace_id, span_id, remote, TraceFlags(flags),
                       TraceState(list(state)) if state else None)


def _bounded(attributes: dict[str, Any], dropped: int) -> Any:
    if not dropped:
        return attributes
    from opentelemetry.attributes import BoundedAttributes

    bounded = BoundedAttributes(None, attributes, immutable=True)
    bounded.dropped = dropped
    return bounded


def _unpack(packed: tuple[Any, ...], resources: Mapping[int, Resource],
            scopes: Mapping[int, InstrumentationScope | None]) -> ReadableSpan:
    (name, context, parent, kind, start, end, attrs, dropped, events, dropped_events,
     links, dropped_links, status, resource, scope) = packed
    from opentelemetry.sdk.util import BoundedList

    event_list: Any = ()
    if events or dropped_events:
        event_list = BoundedList(None)
        for e_name, ts, e_attrs, e_dropped in events or ():
            event_list.append(Event(e_name, _bounded(e_attrs, e_dropped), ts))
        event_list.dropped = dropped_events
    link_list: Any = ()
    if links or dropped_links:
        link_list = BoundedList(None)
        for l_context, l_attrs, l_dropped in links or ():
            link_list.append(Link(cast(SpanContext, _unpack_context(l_context)),
                                  _bounded(l_attrs, l_dropped)))
        link_list.dropped = dropped_links
    return ReadableSpan(
        name=name, context=_unpack_context(context), parent=_unpack_context(parent),
        resource=resources[resource], attributes=_bounded(attrs, dropped),
        events=event_list, links=link_list, kind=_KINDS[kind],
        status=cast(Status, None if status is None else Status(_CODES[status[0]], status[1])),
        start_time=start, end_time=end, instrumentation_scope=scopes[scope])


@final
class _Known:
    """The child's side of ``_Tables``: what it was sent, by number (the same ones kept),
    as the SDK's objects; a run as ``(run id, its RunIds, trace id, run span id,
    resource number, scope number, its PlainSpans)``, its ids hashed once."""

    def __init__(self) -> None:
        self.resources: dict[int, Resource] = {}
        self.scopes: dict[int, InstrumentationScope | None] = {}
        self.runs: dict[int, _KnownRun] = {}

    def batch(self, message: tuple[Any, ...]) -> tuple[dict[int, Resource],
                                                      dict[int, InstrumentationScope | None],
                                                      list[tuple[Any, ...]]]:
        """A ``spans`` message's ``(new resources, new scopes, new runs, packed)`` as
        what ``encode_packed`` takes: every span a full packed tuple, or, a plain step's,
        ``(resource number, scope number, its Span message)``."""
        new_resources, new_scopes, new_runs, packed = message
        for number, (attributes, schema_url) in new_resources:
            self.resources[number] = Resource(attributes, schema_url)
        for number, raw in new_scopes:
            self.scopes[number] = None if raw is None else InstrumentationScope(*raw)
        for number, (run_id, redrive, trace_id, resource, scope) in new_runs:
            ids = RunIds(run_id, redrive=redrive)
            trace_id = trace_id if trace_id is not None else trace_id_for(run_id)
            run_span_id = ids.span("run")
            self.runs[number] = (run_id, ids, trace_id, run_span_id, resource, scope,
                                 PlainSpans(run_id, ids, trace_id, run_span_id))
        runs = self.runs
        out: list[tuple[Any, ...]] = []
        for p in packed:
            if len(p) != _COMPACT_LENGTH:
                out.append(p)
                continue
            run = runs[p[0]]
            what = p[1]
            encoded = None
            if what[0] == "step" and what[6] is None:  # see _otel._Run.span_encoded
                _, step_id, name, parent_id, start, end, _error = what
                encoded = run[6].step(step_id, name, parent_id, start, end)
            out.append(_expand(run, what) if encoded is None else (run[4], run[5], encoded))
        return self.resources, self.scopes, out

    def forget(self) -> None:
        """Forget all but the newest ``_KEPT`` of each kind, once a batch is exported (not
        before: the parent may have forgotten some while packing it, after packing spans
        that refer to them). Numbers grow, so what the parent may still refer to is
        among the newest."""
        for table in (self.resources, self.scopes, self.runs):
            while len(table) > _KEPT:
                del table[next(iter(table))]


_KnownRun = tuple[str, RunIds, int, int, int, int, PlainSpans]


def _expand(run: _KnownRun, what: tuple[Any, ...]) -> tuple[Any, ...]:
    """A span packed as ``(run number, what)`` (a ``LazySpan``'s, see
    ``_otel._Run.span_packed``) as the full packed tuple ``_pack`` makes of other spans:
    the values ``_otel`` would have given it (ids from ``RunIds``, the rest from
    ``_steps``)."""
    run_id, ids, trace_id, run_span_id, resource, scope, _plain = run
    if what[0] == "step":
        _, step_id, name, parent_id, start, end, error = what
        span_name, attributes, message = step_span(run_id, step_id, name, error)
        span_id = ids.step(step_id)
        if parent_id is None:
            parent_id = run_span_id
    else:
        _, status, error, end, start, parent_id, start_attributes = what
        span_name, attributes, message = run_span(start_attributes, status, error)
        span_id = run_span_id
    return (span_name, (trace_id, span_id, False, _SAMPLED, ()),
            None if parent_id is None else (trace_id, parent_id, False, _SAMPLED, ()),
            _INTERNAL, start, end, attributes, 0, None, 0, None, 0,
            (StatusCode.UNSET.value, None) if message is None
            else (StatusCode.ERROR.value, message), resource, scope)


def _read(pipe: IO[bytes]) -> tuple[Any, ...] | None:
    head = pipe.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None  # the parent closed the pipe (or died)
    (size,) = _LENGTH.unpack(head)
    body = pipe.read(size)
    if len(body) < size:
        return None
    message: tuple[Any, ...] = pickle.loads(body)
    return message


def main() -> int:
    """The child: export what arrives on stdin until ``stop`` or the end of the pipe."""
    from ._otlp import OTLPSpanExporter

    logging.basicConfig(level=logging.WARNING, format="stalwart span exporter: %(message)s")
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    first = _read(stdin)
    if first is None or first[0] != "config":
        return 2
    niceness = first[2] if len(first) > 2 else 0
    if niceness and hasattr(os, "nice"):
        try:
            os.nice(niceness)
        except OSError as error:  # a sandbox may refuse it: export at the same priority
            log.warning("cannot lower the export process's priority: %s", error)
    try:
        exporter = OTLPSpanExporter(**first[1])
    except Exception as error:
        log.exception("cannot build the OTLP exporter: %s", error)
        stdout.write(b"failed\n")
        stdout.flush()
        return 2
    stdout.write(b"ok\n")
    stdout.flush()
    known = _Known()
    while (message := _read(stdin)) is not None:
        kind = message[0]
        if kind == "spans":
            try:
                resources, scopes, packed = known.batch(message[1:])
                if exporter.packs:
                    result = exporter.export_packed(resources, scopes, packed)
                else:  # an SDK laid out differently: the SDK's export of rebuilt spans
                    result = exporter.export([_unpack(p, resources, scopes) for p in packed])
            except Exception as error:  # a bad span must not end the exporter
                log.exception("cannot export a batch: %s", error)
                result = SpanExportResult.FAILURE
            known.forget()
            stdout.write(b"ok\n" if result is SpanExportResult.SUCCESS else b"failed\n")
            stdout.flush()
        elif kind in ("flush", "stop"):
            stdout.write(b"ok\n")
            stdout.flush()
            if kind == "stop":
                break
    exporter.shutdown()  # type: ignore[no-untyped-call]
    return 0


if __name__ == "__main__":
    sys.exit(main())

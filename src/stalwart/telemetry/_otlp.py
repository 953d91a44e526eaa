"""OTLP/HTTP span export with stalwart's own protobuf encoder.

Why our own encoder: the SDK's (``opentelemetry-exporter-otlp-proto-common``) builds a
protobuf message object for every span, attribute and value, ~18 us per span on the
batch processor's thread. That thread holds the GIL meanwhile, so the cost lands on the
runtime's event loop: for trivial steps it is more than everything else tracing costs put
together (``bench/bench_tracing.py``). The OTLP protobuf format is a stable, public
specification (``opentelemetry-proto`` v1, whose field numbers never change); this module
writes its bytes directly, keeping the encoded form of attributes that repeat (a run's id,
a step's name) in a bounded cache. A plain step's span (most spans) is encoded by its
run's :class:`PlainSpans` from the few values it was made from, without building its
attributes or context at all: ~3 us a span where the generic path takes ~4.5.
``tests/telemetry/test_otlp_encoder.py`` decodes what it writes with the official proto
classes and checks it equals the SDK encoder's message for every kind of span, attribute
value, event, link, status, resource and scope; ``test_direct_spans.py`` checks the
plain steps' bytes against the generic path's.

Everything else, endpoint, headers, timeout, compression, TLS, the size limit and the
exporter's own metrics, is the SDK's: :class:`OTLPSpanExporter` subclasses the SDK's
exporter and only encodes. Where the SDK's internals it hands the bytes to are missing
(another SDK version), it falls back to the SDK's own ``export``.
"""

from __future__ import annotations

import inspect
import logging
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, final

from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as _SdkOTLPSpanExporter,
)
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import Link, SpanContext, SpanKind, Status

from ._ids import RunIds
from ._spans import EndedSpan, LazySpan
from ._steps import RUN_ID, STEP_ID, STEP_NAME, step_name

__all__ = ["OTLPSpanExporter", "PlainSpans", "encode_packed", "encode_spans"]

log = logging.getLogger("stalwart.telemetry")

_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_ONE_BYTE = [bytes((n,)) for n in range(0x80)]
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_UINT64 = (1 << 64) - 1

# OTLP span kinds (trace.proto Span.SpanKind): 0 is "unspecified", never sent by the SDK.
_KIND = {kind.value: b"\x30" + bytes((kind.value + 1,)) for kind in SpanKind}
_INTERNAL = SpanKind.INTERNAL.value
# SpanFlags: bit 8 says bit 9 is meaningful; bit 9 says the parent is remote.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_LOCAL_PARENT = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE)
_REMOTE_PARENT = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)

_CACHE_MAX = 8192
_ENCODED_LENGTH = 3
"""The length of a span :func:`encode_packed` gets encoded already (any other's is 15)."""
_field_cache: dict[tuple[bytes, str, type, object], bytes] = {}


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (a string, bytes or a message)."""
    n = len(payload)
    return tag + (_ONE_BYTE[n] if n < 0x80 else _varint(n)) + payload


# -- common.proto: AnyValue, KeyValue -------------------------------------------------


def _any(value: Any) -> bytes:
    """The body of an ``AnyValue`` holding ``value`` (the SDK's ``_encode_value`` rules)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"Value out of range: {value}")
        return b"\x18" + _varint(value & _UINT64)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(_field(b"\x0a", _key_value(str(k), v))
                                        for k, v in value.items()))
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _key_value(key: str, value: Any) -> bytes:
    """The body of a ``KeyValue``."""
    return (_field(b"\x0a", key.encode()) if key else b"") + _field(b"\x12", _any(value))


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> list[bytes]:
    """One ``tag`` field per attribute; an attribute that cannot be encoded is left out
    and logged (as the SDK does). Fields of plain values are cached: a run's id, a step's
    name and most attribute values repeat from span to span."""
    if not attributes:
        return []
    out = []
    cache = _field_cache
    for key, value in attributes.items():
        kind = type(value)
        plain = kind is str or kind is int or kind is bool
        if plain:
            found = cache.get((tag, key, kind, value))
            if found is not None:
                out.append(found)
                continue
        try:
            field = _field(tag, _key_value(key, value))
        except Exception as error:
            log.exception("Failed to encode key %s: %s", key, error)
            continue
        if plain:
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[(tag, key, kind, value)] = field
        out.append(field)
    return out


# -- trace.proto: Span ----------------------------------------------------------------


def _span(name: str, trace_id: int, span_id: int, state: Any, parent_id: int | None,
          parent_remote: bool, kind: int, start: int | None, end: int | None,
          attributes: Mapping[str, Any] | None, dropped_attributes: int,
          events: Iterable[tuple[str, int | None, Mapping[str, Any] | None, int]],
          dropped_events: int,
          links: Iterable[tuple[int, int, bool, Mapping[str, Any] | None, int]],
          dropped_links: int, status: tuple[int, str | None] | None) -> bytes:
    """A ``Span`` message from plain values: ``state`` the trace state's ``(key, value)``
    pairs, ``kind`` a ``SpanKind`` value, ``events`` ``(name, time, attributes,
    dropped)``, ``links`` ``(trace id, span id, remote, attributes, dropped)``,
    ``status`` ``(code value, description)``."""
    parts = [b"\x0a\x10" + trace_id.to_bytes(16, "big"), b"\x12\x08" + span_id.to_bytes(8, "big")]
    if state:
        text = ",".join(f"{k}={v}" for k, v in state)
        if text:
            parts.append(_field(b"\x1a", text.encode()))
    if parent_id is not None:
        parts.append(b"\x22\x08" + parent_id.to_bytes(8, "big"))
    if name:
        parts.append(_field(b"\x2a", name.encode()))
    parts.append(_KIND[kind])
    if start:
        parts.append(b"\x39" + _pack_fixed64(start))
    if end:
        parts.append(b"\x41" + _pack_fixed64(end))
    parts += _attributes(b"\x4a", attributes)
    if dropped_attributes:
        parts.append(b"\x50" + _varint(dropped_attributes))
    for e_name, timestamp, e_attributes, e_dropped in events:
        body = [b"\x09" + _pack_fixed64(timestamp)] if timestamp else []
        if e_name:
            body.append(_field(b"\x12", e_name.encode()))
        body += _attributes(b"\x1a", e_attributes)
        if e_dropped:
            body.append(b"\x20" + _varint(e_dropped))
        parts.append(_field(b"\x5a", b"".join(body)))
    if dropped_events:
        parts.append(b"\x60" + _varint(dropped_events))
    for l_trace, l_span, l_remote, l_attributes, l_dropped in links:
        body = [b"\x0a\x10" + l_trace.to_bytes(16, "big"), b"\x12\x08" + l_span.to_bytes(8, "big")]
        body += _attributes(b"\x22", l_attributes)
        if l_dropped:
            body.append(b"\x28" + _varint(l_dropped))
        body.append(b"\x35" + _pack_fixed32(_HAS_IS_REMOTE | (_IS_REMOTE if l_remote else 0)))
        parts.append(_field(b"\x6a", b"".join(body)))
    if dropped_links:
        parts.append(b"\x70" + _varint(dropped_links))
    if status is not None:
        code, description = status
        if not code and not description:
            parts.append(b"\x7a\x00")
        else:
            body = [_field(b"\x12", description.encode())] if description else []
            if code:
                body.append(b"\x18" + _varint(code))
            parts.append(_field(b"\x7a", b"".join(body)))
    parts.append(_REMOTE_PARENT if parent_remote else _LOCAL_PARENT)
    return b"".join(parts)


_STEP_TAIL = _KIND[_INTERNAL] + b"\x39"
_UNSET_STATUS = b"\x7a\x00"
_step_names: dict[str, tuple[bytes, bytes]] = {}
_step_ids: dict[str, bytes] = {}


@final
class PlainSpans:
    """The ``Span`` messages of one run's plain steps (``LazySpan``: no error, no event,
    no nested call), encoded with what is the same for all of them encoded once: a step
    costs its span id's hash and a join. The bytes are :func:`_span`'s for the same span
    (``tests/telemetry/test_direct_spans.py`` compares them)."""

    __slots__ = ("_ids", "_parent", "_run_id", "_trace")

    def __init__(self, run_id: str, ids: RunIds, trace_id: int, run_span_id: int) -> None:
        self._ids = ids
        self._trace = b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08"
        self._parent = b"\x22\x08" + run_span_id.to_bytes(8, "big")
        self._run_id = _field(b"\x4a", _key_value(RUN_ID, run_id))

    def step(self, step_id: str, name: str, parent_id: int | None, start: int,
             end: int) -> bytes | None:
        """Step ``step_id``'s span, under ``parent_id`` (``None``: the run's); ``None``
        when it is not the usual one (a time of 0, which :func:`_span` leaves out)."""
        if not start or not end:
            return None
        named = _step_names.get(name)
        if named is None:
            if len(_step_names) >= _CACHE_MAX:
                _step_names.clear()
            named = _step_names[name] = (_field(b"\x2a", step_name(name).encode()),
                                         _field(b"\x4a", _key_value(STEP_NAME, name)))
        numbered = _step_ids.get(step_id)
        if numbered is None:
            if len(_step_ids) >= _CACHE_MAX:
                _step_ids.clear()
            numbered = _step_ids[step_id] = _field(b"\x4a", _key_value(STEP_ID, step_id))
        return b"".join((
            self._trace, self._ids.step(step_id).to_bytes(8, "big"),
            self._parent if parent_id is None else b"\x22\x08" + parent_id.to_bytes(8, "big"),
            named[0], _STEP_TAIL, _pack_fixed64(start), b"\x41", _pack_fixed64(end),
            self._run_id, numbered, named[1], _UNSET_STATUS, _LOCAL_PARENT))


def _sdk_span(name: str, ctx: SpanContext | None, parent: SpanContext | None,
              kind: SpanKind, start: int | None, end: int | None,
              attributes: Mapping[str, Any] | None, dropped_attributes: int,
              events: Sequence[Event], dropped_events: int, links: Sequence[Link],
              dropped_links: int, status: Status | None) -> bytes:
    """:func:`_span` of the SDK's span objects."""
    assert ctx is not None
    return _span(
        name, ctx.trace_id, ctx.span_id, ctx.trace_state.items() if ctx.trace_state else None,
        parent.span_id if parent else None, parent is not None and parent.is_remote,
        kind.value, start, end, attributes, dropped_attributes,
        [(e.name, e.timestamp, e.attributes, e.dropped_attributes) for e in events]
        if events else (), dropped_events,
        [(lk.context.trace_id, lk.context.span_id, lk.context.is_remote, lk.attributes,
          lk.dropped_attributes) for lk in links] if links else (), dropped_links,
        None if status is None else (status.status_code.value, status.description))


def _packed_span(packed: tuple[Any, ...]) -> bytes:
    """:func:`_span` of a span packed by ``_sidecar._pack`` (no SDK objects rebuilt)."""
    (name, context, parent, kind, start, end, attributes, dropped, events, dropped_events,
     links, dropped_links, status, _resource, _scope) = packed
    trace_id, span_id, _remote, _flags, state = context
    return _span(
        name, trace_id, span_id, state, parent[1] if parent else None,
        bool(parent and parent[2]), kind, start, end, attributes, dropped,
        events or (), dropped_events,
        [(ctx[0], ctx[1], ctx[2], l_attributes, l_dropped)
         for ctx, l_attributes, l_dropped in links] if links else (), dropped_links, status)


@final
class _Groups:
    """Spans grouped by resource, then by instrumentation scope, as OTLP nests them (and
    in the SDK's order: groups by equality, in order of first appearance). Hashing a
    ``Resource`` serializes its attributes, so consecutive spans sharing the same objects
    (the usual case) are grouped without hashing."""

    __slots__ = ("_last", "resources")

    def __init__(self) -> None:
        self.resources: dict[Any, dict[Any, list[bytes]]] = {}
        self._last: tuple[Any, Any, list[bytes]] | None = None

    def add(self, span: ReadableSpan) -> None:
        parts = None
        if type(span) is LazySpan:
            encoded = span.encoded()
            if encoded is not None:  # a plain step's, encoded by its run
                self.add_encoded(*encoded)
                return
            parts = span.parts()
        if parts is not None:  # plain values, no SDK object made
            (name, trace_id, span_id, parent_id, start, end, attributes, status, resource,
             scope) = parts
            self.add_encoded(resource, scope, _span(
                name, trace_id, span_id, None, parent_id, False, _INTERNAL, start, end,
                attributes, 0, (), 0, (), 0, status))
            return
        fields = span.fields() if isinstance(span, EndedSpan) else None
        if fields is not None:  # a direct span not filled in: read its raw fields
            (name, context, parent, resource, attributes, events, links, kind, _info,
             status, start, end, scope) = fields
            encoded_span = _sdk_span(name, context, parent, kind, start, end, attributes,
                                 getattr(attributes, "dropped", 0), events,
                                 getattr(events, "dropped", 0), links, 0, status)
        else:
            resource, scope = span.resource, span.instrumentation_scope
            encoded_span = _sdk_span(
                span.name, span.context, span.parent, span.kind, span.start_time,
                span.end_time, span.attributes, span.dropped_attributes, span.events,
                span.dropped_events, span.links, span.dropped_links, span.status)
        self.add_encoded(resource, scope, encoded_span)

    def add_encoded(self, resource: Any, scope: Any, encoded_span: bytes) -> None:
        """Add a span already encoded (a ``Span`` message's body)."""
        scope = scope or None
        last = self._last
        if last is not None and last[0] is resource and last[1] is scope:
            encoded = last[2]
        else:
            scopes = self.resources.get(resource)
            if scopes is None:
                scopes = self.resources[resource] = {}
            found = scopes.get(scope)
            if found is None:
                found = scopes[scope] = []
            encoded = found
            self._last = (resource, scope, encoded)
        encoded.append(_field(b"\x12", encoded_span))

    def request(self) -> bytes:
        out = []
        for resource, scopes in self.resources.items():
            body = [_field(b"\x0a", b"".join(_attributes(b"\x0a", resource.attributes)))]
            for scope, spans in scopes.items():
                scope_spans = [_field(b"\x0a", _scope(scope)), *spans]
                if scope is not None and scope.schema_url:
                    scope_spans.append(_field(b"\x1a", scope.schema_url.encode()))
                body.append(_field(b"\x12", b"".join(scope_spans)))
            if resource.schema_url:
                body.append(_field(b"\x1a", resource.schema_url.encode()))
            out.append(_field(b"\x0a", b"".join(body)))
        return b"".join(out)


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    body = [_field(b"\x0a", scope.name.encode())] if scope.name else []
    if scope.version:
        body.append(_field(b"\x12", scope.version.encode()))
    body += _attributes(b"\x1a", scope.attributes)
    return b"".join(body)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` for ``spans``: the message the SDK's
    ``encode_spans`` builds, as bytes."""
    groups = _Groups()
    for span in spans:
        groups.add(span)
    return groups.request()


def encode_packed(resources: Mapping[int, Any], scopes: Mapping[int, Any],
                  packed: Iterable[tuple[Any, ...]]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` for spans packed by the span export
    process's parent (``_sidecar``): each refers to its ``Resource`` and
    ``InstrumentationScope`` by its number in ``resources`` and ``scopes``. The same bytes
    as :func:`encode_spans` of the ``ReadableSpan``\\ s they were packed from. A span may
    also come encoded already, as ``(resource number, scope number, Span bytes)``."""
    groups = _Groups()
    for span in packed:
        if len(span) == _ENCODED_LENGTH:
            groups.add_encoded(resources[span[0]], scopes[span[1]], span[2])
        else:
            groups.add_encoded(resources[span[13]], scopes[span[14]], _packed_span(span))
    return groups.request()


@final
class OTLPSpanExporter(_SdkOTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter (same arguments, same ``OTEL_EXPORTER_OTLP_*``
    variables) encoding with :func:`encode_spans`, ~4x cheaper than the SDK's encoder.

    To a plain ``http://`` endpoint (a local collector, typically) it posts with the
    SDK's own urllib3 transport rather than ``requests``, which costs ~1 us more a span
    of the processor's thread. Only where the two send the same request: no ``session``
    or credential provider, no proxy or ``.netrc`` entry from the environment for the
    endpoint, and no TLS, whose certificate store they would pick differently."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        try:
            given = inspect.signature(_SdkOTLPSpanExporter.__init__).bind(
                self, *args, **kwargs).arguments
        except TypeError:  # pragma: no cover - the SDK accepted what we cannot bind
            return
        if given.get("session") is None and given.get("_transport") is None:
            _lighter_transport(self)

    @property
    def packs(self) -> bool:
        """Whether this exporter encodes itself (the SDK's internals it hands the bytes to
        are there); else :meth:`export` is the SDK's and :meth:`export_packed` fails."""
        return (getattr(self, "_client", None) is not None
                and getattr(self, "_metrics", None) is not None
                and isinstance(getattr(self, "_max_request_size", None), int))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.packs:
            return super().export(spans)  # an SDK laid out differently: its own path
        return self._send(len(spans), lambda: encode_spans(spans))

    def export_packed(self, resources: Mapping[int, Any], scopes: Mapping[int, Any],
                      packed: Sequence[tuple[Any, ...]]) -> SpanExportResult:
        """Export spans packed by ``_sidecar`` (see :func:`encode_packed`); only when
        :attr:`packs`."""
        if not self.packs:
            raise NotImplementedError("this SDK's exporter is laid out differently")
        return self._send(len(packed), lambda: encode_packed(resources, scopes, packed))

    def _send(self, count: int, encode: Callable[[], bytes]) -> SpanExportResult:
        """Encode a batch of ``count`` spans and post it, as the SDK's ``export`` does
        with its own encoding (size limit, retries, its metrics)."""
        if self._shutdown:
            log.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        limit: int = self._max_request_size
        with self._metrics.export_operation(count) as result:
            try:
                data = encode()
            except Exception as error:
                log.error("Failed to encode span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE
            if 0 < limit < len(data):
                log.warning("Dropping span batch: serialized size %d bytes exceeds "
                            "max_request_size %d bytes.", len(data), limit)
                result.error = ValueError(f"span batch of {len(data)} bytes exceeds "
                                          f"max_request_size {limit}")
                return SpanExportResult.FAILURE
            outcome = self._client.export(data)
            if not outcome.success:
                result.error = outcome.error
                if outcome.status_code is not None:
                    result.error_attrs = {"http.response.status_code": outcome.status_code}
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


_CREDENTIALS = ("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
                "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER")


def _lighter_transport(exporter: OTLPSpanExporter) -> None:
    """Swap the exporter's ``requests`` transport for the SDK's urllib3 one where they
    send the same request (see :class:`OTLPSpanExporter`); leave it otherwise."""
    client: Any = getattr(exporter, "_client", None)
    transport = getattr(client, "_transport", None)
    endpoint = getattr(exporter, "_endpoint", None)
    try:
        import requests.utils
        from opentelemetry.exporter.http.transport._requests import RequestsHTTPTransport
        from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport
    except ImportError:  # an SDK without both transports
        return
    if (type(transport) is not RequestsHTTPTransport or not isinstance(endpoint, str)
            or not endpoint.startswith("http://") or any(map(os.environ.get, _CREDENTIALS))):
        return
    session = getattr(transport, "_session", None)
    if (type(session) is not requests.Session or session.auth is not None
            or session.proxies or requests.utils.get_environ_proxies(endpoint)
            or requests.utils.get_netrc_auth(endpoint) is not None):
        return
    client._transport = Urllib3HTTPTransport(verify=session.verify, cert=session.cert)
    transport.close()

"""stalwart's OTLP encoder writes the message the SDK's encoder builds, byte for byte, for
every kind of span, value, event, link, status, resource and scope; its exporter sends it
over real HTTP to a receiver that decodes it."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from stalwart.telemetry import OTLPReceiver
from stalwart.telemetry._otlp import OTLPSpanExporter, encode_packed, encode_spans
from stalwart.telemetry._sidecar import _Known, _pack, _Tables

SAMPLED = TraceFlags(TraceFlags.SAMPLED)
RESOURCE = Resource.create({"service.name": "encoder", "deployment": "test"})
OTHER = Resource({"service.name": "other"}, schema_url="https://example.com/r")
SCOPE = InstrumentationScope("stalwart", "1.2.3", "https://example.com/s", {"lib": "x"})

VALUES: dict[str, Any] = {
    "str": "text", "empty": "", "unicode": "café ☕", "true": True, "false": False,
    "zero": 0, "int": 42, "negative": -7, "int64_max": 2**63 - 1, "int64_min": -(2**63),
    "float": 1.5, "nan-free": -0.0, "bytes": b"\x00\xff", "strs": ("a", "b"),
    "ints": [1, -2, 3], "bools": (True, False), "floats": (0.5,), "empty_seq": (),
    "mapping": {"k": 1, "nested": {"x": "y"}}, "none": None, "too_big": 2**64,
    "": "empty key",
}


def span(i: int = 0, **overrides: Any) -> ReadableSpan:
    fields: dict[str, Any] = {
        "name": f"step {i}", "context": SpanContext(7, 100 + i, False, SAMPLED),
        "parent": SpanContext(7, 99, False, SAMPLED), "resource": RESOURCE,
        "attributes": {"stalwart.run_id": "run-1", "stalwart.step_id": str(i)},
        "events": (), "links": (), "kind": SpanKind.INTERNAL, "status": Status(),
        "start_time": 1_000 + i, "end_time": 2_000 + i, "instrumentation_scope": SCOPE}
    fields.update(overrides)
    return ReadableSpan(**fields)


def assert_same(spans: list[ReadableSpan]) -> None:
    """Our encoding equals the SDK's: of the spans, and of the spans as the export
    process receives them (packed in this process, pickled, encoded there)."""
    ours = encode_spans(spans)
    theirs = sdk_encode(spans)
    assert ExportTraceServiceRequest.FromString(ours) == theirs
    assert ours == theirs.SerializeToString()
    tables = _Tables()
    packed = [_pack(s, tables) for s in spans]
    message = pickle.loads(pickle.dumps((*tables.take(), packed)))
    assert encode_packed(*_Known().batch(message)) == ours


@pytest.fixture(autouse=True)
def _quiet_encoding_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    # Both encoders log (and leave out) an attribute they cannot encode: expected here.
    with caplog.at_level(logging.CRITICAL):
        yield


def test_plain_step_spans() -> None:
    assert_same([span(i) for i in range(5)])


@pytest.mark.parametrize("key", list(VALUES))
def test_every_kind_of_attribute_value(key: str) -> None:
    assert_same([span(attributes={key: VALUES[key]})])


def test_all_values_at_once_and_in_events_and_links() -> None:
    event = Event("stalwart.retried", dict(VALUES), timestamp=1_500)
    unnamed = Event("", None, timestamp=0)
    links = (Link(SpanContext(8, 5, True, SAMPLED), {"why": "fork"}),
             Link(SpanContext(9, 6, False, SAMPLED)))
    assert_same([span(attributes=dict(VALUES), events=(event, unnamed), links=links)])


@pytest.mark.parametrize("status", [
    Status(), Status(StatusCode.OK), Status(StatusCode.ERROR),
    Status(StatusCode.ERROR, "boom: it broke"), None])
def test_statuses(status: Status | None) -> None:
    assert_same([span(status=status)])


@pytest.mark.parametrize("kind", list(SpanKind))
def test_kinds(kind: SpanKind) -> None:
    assert_same([span(kind=kind)])


def test_roots_remote_parents_trace_state_and_empty_names() -> None:
    assert_same([
        span(parent=None),
        span(1, parent=SpanContext(7, 98, True, SAMPLED)),
        span(2, context=SpanContext(7, 102, False, SAMPLED,
                                    TraceState([("vendor", "a1"), ("other", "b2")]))),
        span(3, name=""),
        span(4, start_time=None, end_time=None),
    ])


def test_resources_and_scopes_group_in_order_of_first_appearance() -> None:
    bare = InstrumentationScope("bare")
    spans = [span(0), span(1, resource=OTHER), span(2, instrumentation_scope=bare),
             span(3), span(4, resource=OTHER, instrumentation_scope=None),
             span(5, resource=Resource.create({"service.name": "encoder",
                                               "deployment": "test"}))]
    assert_same(spans)


def test_spans_of_the_sdk_with_limits_and_dropped_counts() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE, span_limits=SpanLimits(
        max_span_attributes=2, max_events=1, max_links=1, max_event_attributes=1,
        max_attribute_length=4))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("stalwart", "9.9")
    with tracer.start_as_current_span("outer", links=[
            Link(SpanContext(1, 2, False, SAMPLED), {"a": 1, "b": 2}),
            Link(SpanContext(1, 3, False, SAMPLED))]) as outer:
        outer.set_attributes({"a": "long value", "b": 2, "c": 3.0})
        outer.add_event("first", {"x": 1, "y": 2})
        outer.add_event("second")
        with tracer.start_as_current_span("inner", kind=SpanKind.CLIENT) as inner:
            inner.set_status(Status(StatusCode.ERROR, "inner failed"))
    spans = list(exporter.get_finished_spans())
    assert spans[1].dropped_attributes and spans[1].dropped_events
    assert spans[1].dropped_links
    assert_same(spans)
    provider.shutdown()


plain = st.one_of(st.none(), st.booleans(), st.text(max_size=20),
                  st.integers(min_value=-(2**65), max_value=2**65),
                  st.floats(allow_nan=False), st.binary(max_size=8))
value = st.one_of(plain, st.lists(plain, max_size=4).map(tuple),
                  st.dictionaries(st.text(max_size=5), plain, max_size=3))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=12), value, max_size=6), min_size=1,
                max_size=4))
def test_any_attributes(attribute_sets: list[dict[str, Any]]) -> None:
    assert_same([span(i, attributes=attrs,
                      events=(Event("e", attrs, timestamp=5),))
                 for i, attrs in enumerate(attribute_sets)])


def test_the_exporter_sends_what_the_sdk_would_over_http() -> None:
    spans = [span(i, attributes=dict(VALUES)) for i in range(3)]
    for compression in (Compression.NoCompression, Compression.Gzip):
        with OTLPReceiver() as rx:
            exporter = OTLPSpanExporter(endpoint=f"{rx.endpoint}/v1/traces",
                                        compression=compression)
            assert exporter._client is not None  # the fast path: the SDK's HTTP client
            assert exporter.export(spans) is SpanExportResult.SUCCESS
            exporter.shutdown()
            assert exporter.export(spans) is SpanExportResult.FAILURE
        assert rx.traces == [sdk_encode(spans)]


def test_an_unreachable_endpoint_is_a_failed_export_not_an_exception() -> None:
    with OTLPReceiver() as rx:
        endpoint = f"{rx.endpoint}/v1/traces"
    exporter = OTLPSpanExporter(endpoint=endpoint, timeout=0.5)
    try:
        assert exporter.export([span()]) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()


def test_a_batch_over_the_size_limit_is_dropped_whole() -> None:
    with OTLPReceiver() as rx:
        one = len(encode_spans([span(0)]))
        exporter = OTLPSpanExporter(endpoint=f"{rx.endpoint}/v1/traces",
                                    max_request_size=one + 10)
        assert exporter.export([span(i) for i in range(5)]) is SpanExportResult.FAILURE
        assert exporter.export([span(0)]) is SpanExportResult.SUCCESS
        exporter.shutdown()
    assert len(rx.spans()) == 1


def test_a_plain_http_endpoint_is_posted_to_with_urllib3_where_requests_would_send_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The lighter transport only where nothing in the environment or the arguments
    would make ``requests`` send something else; the batch arrives either way."""
    import requests
    from opentelemetry.exporter.http.transport._requests import RequestsHTTPTransport
    from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport

    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "")
    with OTLPReceiver() as rx:
        url = f"{rx.endpoint}/v1/traces"

        def transport(**kwargs: Any) -> object:
            exporter = OTLPSpanExporter(**kwargs)
            assert exporter.export([span(0)]) is SpanExportResult.SUCCESS
            exporter.shutdown()
            return type(exporter._client._transport)

        assert transport(endpoint=url) is Urllib3HTTPTransport
        assert transport(endpoint=url, session=requests.Session()) is RequestsHTTPTransport
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        assert transport() is Urllib3HTTPTransport
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # the proxy would be used
        exporter = OTLPSpanExporter(endpoint=url)
        assert type(exporter._client._transport) is RequestsHTTPTransport
        exporter.shutdown()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # ... but not for this endpoint
        assert transport(endpoint=url) is Urllib3HTTPTransport
    assert len(rx.spans()) == 4
    tls = OTLPSpanExporter(endpoint="https://127.0.0.1:9/v1/traces")
    assert type(tls._client._transport) is RequestsHTTPTransport
    tls.shutdown()

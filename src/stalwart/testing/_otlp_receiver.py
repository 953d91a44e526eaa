"""A local OTLP/HTTP receiver that decodes what it is sent (for tests and benchmarks).

It listens on 127.0.0.1 (an ephemeral port by default), accepts ``POST /v1/traces`` and
``POST /v1/metrics`` with protobuf bodies (gzip or not), decodes them with the official
protobuf classes (``opentelemetry-proto``, in the ``otel`` extra) and keeps the decoded
requests: only the HTTP endpoint a collector offers is written here. Point an exporter
at it with ``OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint``.
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, final

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ["OTLPReceiver"]


@final
class OTLPReceiver:
    """``with OTLPReceiver() as rx: ...``; ``rx.spans()`` are the decoded spans."""

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Lock()
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                reply: bytes
                if self.path == "/v1/traces":
                    req = ExportTraceServiceRequest.FromString(body)
                    with receiver._lock:
                        receiver.traces.append(req)
                        receiver.requests += 1
                    reply = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    mreq = ExportMetricsServiceRequest.FromString(body)
                    with receiver._lock:
                        receiver.metrics.append(mreq)
                        receiver.requests += 1
                    reply = ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def spans(self) -> list[Any]:
        """Every span received, decoded (``opentelemetry.proto.trace.v1.Span``)."""
        with self._lock:
            return [span for req in self.traces for rs in req.resource_spans
                    for ss in rs.scope_spans for span in ss.spans]

    def resources(self) -> list[dict[str, Any]]:
        """The resource attributes of each batch of spans received."""
        with self._lock:
            return [attributes(rs.resource.attributes) for req in self.traces
                    for rs in req.resource_spans]

    def metric_names(self) -> set[str]:
        with self._lock:
            return {m.name for req in self.metrics for rm in req.resource_metrics
                    for sm in rm.scope_metrics for m in sm.metrics}


def attributes(kvs: Any) -> dict[str, Any]:
    """Decode OTLP ``KeyValue`` attributes into a plain dict."""
    out: dict[str, Any] = {}
    for kv in kvs:
        out[kv.key] = _value(kv.value)
    return out


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    if which == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return getattr(v, which) if which else None

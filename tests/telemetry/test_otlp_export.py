"""Export through the official OTLP exporters, configured by the standard OTEL_* variables:
over HTTP to a receiver on 127.0.0.1 that decodes with the official protobuf classes, over
gRPC to a gRPC collector service on 127.0.0.1, and to the console (stderr)."""

from __future__ import annotations

import sys
import threading
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

import stalwart as sw
from stalwart.models import ModelRequest, ToolCallRequest
from stalwart.telemetry import NOOP, Tracing, configure, trace_id_for
from stalwart.telemetry._setup import _span_exporters
from stalwart.testing import MemoryStore, OTLPReceiver
from stalwart.testing._otlp_receiver import attributes


def script(request: ModelRequest) -> str | ToolCallRequest:
    if request.messages[-1].role == "user":
        return ToolCallRequest.create("call-7", "lookup", {"q": "tea"})
    return "tea is hot"


def lookup(q: str) -> str:
    return f"{q}: hot"


BREW = sorted(["workflow brew", "invoke_agent barista", "step chat:barista",
                            "chat tea", "step tool:lookup", "execute_tool lookup",
                            "step chat:barista", "chat tea"])


async def brew_once(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """One traced run of an agent with a tool, exported by what configure() builds from
    ``env``; flushed and shut down."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "stalwart-otlp-test")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")
    providers = configure(set_global=False)
    assert providers is not None
    app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True),
                     models={"sim:tea": sw.SimulatedModel("tea", script=script)},
                     tracing=Tracing(tracer_provider=providers.tracer_provider,
                                     meter_provider=providers.meter_provider))
    agent = sw.Agent("barista", "sim:tea", tools=[sw.Tool(lookup)])

    @app.workflow(name="brew")
    async def brew(ctx: sw.Context) -> str:
        return await agent.run(ctx, "tea?")

    async with app:
        assert await app.run(brew, run_id="brew-1") == "tea is hot"
    assert providers.tracer_provider.force_flush()
    assert providers.meter_provider.force_flush()
    providers.tracer_provider.shutdown()
    providers.meter_provider.shutdown()


async def test_spans_and_metrics_reach_a_local_otlp_http_receiver(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """configure() reads OTEL_EXPORTER_OTLP_ENDPOINT/OTEL_SERVICE_NAME and posts OTLP/HTTP
    through the official exporters; the receiver decodes it."""
    with OTLPReceiver() as rx:
        await brew_once(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint)
    spans = rx.spans()
    assert sorted(s.name for s in spans) == BREW
    assert {s.trace_id for s in spans} == {trace_id_for("brew-1").to_bytes(16, "big")}
    assert {r["service.name"] for r in rx.resources()} == {"stalwart-otlp-test"}
    tool = next(s for s in spans if s.name == "execute_tool lookup")
    assert attributes(tool.attributes)["gen_ai.tool.call.id"] == "call-7"
    chat = [attributes(s.attributes) for s in spans if s.name == "chat tea"]
    assert [c["gen_ai.response.finish_reasons"] for c in chat] == [("tool_calls",), ("stop",)]
    assert all(c["gen_ai.provider.name"] == "sim" and c["gen_ai.usage.input_tokens"] > 0
               for c in chat)
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration"} <= (
        rx.metric_names())




class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """The trace service of an OTLP/gRPC collector: keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.lock = threading.Lock()

    def Export(self, request: ExportTraceServiceRequest,  # the gRPC method's name
               context: Any) -> ExportTraceServiceResponse:
        with self.lock:
            self.requests.append(request)
        return ExportTraceServiceResponse()


async def test_otlp_over_grpc_reaches_a_grpc_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc: the official gRPC exporter, to a real gRPC server."""
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        await brew_once(monkeypatch, OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                        OTEL_EXPORTER_OTLP_INSECURE="true", OTEL_METRICS_EXPORTER="none")
    finally:
        server.stop(grace=None).wait()
    spans = [span for req in collector.requests for rs in req.resource_spans
             for ss in rs.scope_spans for span in ss.spans]
    assert sorted(s.name for s in spans) == BREW
    assert {s.trace_id for s in spans} == {trace_id_for("brew-1").to_bytes(16, "big")}


def test_the_exporters_follow_otel_traces_exporter_and_the_protocol(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """otlp over http/protobuf by default, grpc per protocol (per signal too), console,
    none, several; unknown names and protocols are refused by name."""

    def built(**env: str) -> list[type]:
        for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL",
                     "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return [type(exporter) for exporter in _span_exporters()]

    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    assert built() == [OTLPSpanExporter]
    assert built(OTEL_EXPORTER_OTLP_PROTOCOL="grpc") == [GrpcSpanExporter]
    assert built(OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                 OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/protobuf") == [OTLPSpanExporter]
    assert built(OTEL_TRACES_EXPORTER="console,otlp") == [ConsoleSpanExporter, OTLPSpanExporter]
    assert built(OTEL_TRACES_EXPORTER="none") == []
    with pytest.raises(sw.ConfigurationError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        built(OTEL_TRACES_EXPORTER="zipkin")
    with pytest.raises(sw.ConfigurationError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        built(OTEL_EXPORTER_OTLP_PROTOCOL="http/json")
    # Without the grpc exporter installed: what to install, not an ImportError.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
                        None)
    with pytest.raises(sw.ConfigurationError, match=r"pip install -e '\.\[otel-grpc\]'"):
        built(OTEL_EXPORTER_OTLP_PROTOCOL="grpc")


async def test_console_spans_go_to_stderr_not_stdout(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """OTEL_TRACES_EXPORTER=console writes spans to stderr: stdout stays the program's."""
    await brew_once(monkeypatch, OTEL_TRACES_EXPORTER="console",
                    OTEL_METRICS_EXPORTER="console")
    out, err = capsys.readouterr()
    assert out == ""
    assert '"name": "workflow brew"' in err and "gen_ai.client.token.usage" in err


def test_otel_sdk_disabled_means_tracing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_SDK_DISABLED=true: configure() installs nothing and Tracing() binds the no-op
    interceptor (it used to raise, since no SDK provider was there)."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert configure(set_global=False) is None
    app = sw.Runtime(MemoryStore(), tracing=Tracing())
    assert app.interceptor is NOOP

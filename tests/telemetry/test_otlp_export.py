"""OTLP/HTTP export, configured by the standard OTEL_* variables, received and decoded by
a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import pytest

import stalwart as sw
from stalwart.models import ModelRequest, ToolCallRequest
from stalwart.telemetry import OTLPReceiver, Tracing, configure, trace_id_for
from stalwart.telemetry._receiver import attributes
from stalwart.testing import MemoryStore


def script(request: ModelRequest) -> str | ToolCallRequest:
    if request.messages[-1].role == "user":
        return ToolCallRequest.create("call-7", "lookup", {"q": "tea"})
    return "tea is hot"


def lookup(q: str) -> str:
    return f"{q}: hot"


async def test_spans_and_metrics_reach_a_local_otlp_receiver(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """configure() reads OTEL_EXPORTER_OTLP_ENDPOINT/OTEL_SERVICE_NAME; the receiver decodes."""
    with OTLPReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "stalwart-otlp-test")
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")
        providers = configure(set_global=False)
        assert providers is not None
        clock = sw.FakeClock(autojump=True)
        app = sw.Runtime(MemoryStore(), clock=clock,
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

    spans = rx.spans()
    names = sorted(s.name for s in spans)
    assert names == sorted(["workflow brew", "invoke_agent barista", "step chat:barista",
                            "chat tea", "step tool:lookup", "execute_tool lookup",
                            "step chat:barista", "chat tea"])
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


def test_otel_sdk_disabled_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_SDK_DISABLED=true: configure() returns None; a bad exporter name is refused."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert configure(set_global=False) is None
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(sw.ConfigurationError, match="OTEL_TRACES_EXPORTER"):
        configure(set_global=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(sw.ConfigurationError, match="http/protobuf"):
        configure(set_global=False)

"""Span export from a child process: what reaches a real OTLP receiver is what the SDK
would send; results, a dying child and a dying parent are handled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags, TraceState

import stalwart as sw
from stalwart.telemetry import OTLPReceiver, ProcessSpanExporter, Tracing, configure
from stalwart.telemetry._sidecar import _context
from stalwart.testing import MemoryStore

from .test_otlp_encoder import VALUES, span

pytestmark = pytest.mark.slow  # each test starts a Python child process


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as rx:
        yield rx


def merged(rx: OTLPReceiver) -> ExportTraceServiceRequest:
    out = ExportTraceServiceRequest()
    for request in rx.traces:
        out.MergeFrom(request)
    return out


def test_every_kind_of_span_arrives_as_the_sdk_would_send_it(receiver: OTLPReceiver) -> None:
    from opentelemetry.sdk.trace import Event
    from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags

    sampled = TraceFlags(TraceFlags.SAMPLED)
    spans = [span(0, attributes={k: v for k, v in VALUES.items() if k != "too_big"}),
             span(1, events=(Event("e", {"x": 1}, timestamp=5),),
                  links=(Link(SpanContext(3, 4, True, sampled), {"why": "fork"}),),
                  status=Status(StatusCode.ERROR, "boom")),
             span(2, parent=None, resource=Resource({"service.name": "other"}, "s://u"))]
    exporter = ProcessSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
    try:
        assert exporter.started()
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE  # after shutdown
    assert receiver.traces == [sdk_encode(spans)]


async def test_a_traced_run_exports_through_the_child_as_through_memory(
        receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same run, traced into memory and through the child process (spans built
    directly, never filled in in this process): the same OTLP spans arrive."""
    resource = Resource({"service.name": "same"})

    async def work(n: int) -> int:
        return n * 2

    async def traced(provider: TracerProvider, run_id: str) -> None:
        app = sw.Runtime(MemoryStore(), clock=sw.FakeClock(autojump=True),
                         tracing=Tracing(tracer_provider=provider, metrics=False))

        @app.workflow(name="doubling")
        async def doubling(ctx: sw.Context) -> int:
            total = 0
            for i in range(40):
                total += await ctx.step(work, i, name=f"w{i % 3}")
            return total

        async with app:
            assert await app.run(doubling, run_id=run_id) == 2 * sum(range(40))

    memory = InMemorySpanExporter()
    in_memory = TracerProvider(resource=resource)
    in_memory.add_span_processor(SimpleSpanProcessor(memory))
    await traced(in_memory, "double-1")

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    providers = configure(set_global=False, resource=resource, export_from="process")
    assert providers is not None
    (processor,) = providers.tracer_provider._active_span_processor._span_processors
    assert isinstance(processor, BatchSpanProcessor)
    exporter = processor.span_exporter
    assert isinstance(exporter, ProcessSpanExporter) and exporter.started()
    await traced(providers.tracer_provider, "double-1")
    assert providers.tracer_provider.force_flush()
    providers.tracer_provider.shutdown()
    providers.meter_provider.shutdown()

    def by_id(request: ExportTraceServiceRequest) -> list[bytes]:
        return sorted(s.SerializeToString() for rs in request.resource_spans
                      for ss in rs.scope_spans for s in ss.spans)

    expected = sdk_encode(memory.get_finished_spans())
    assert len(by_id(expected)) == 41
    assert by_id(merged(receiver)) == by_id(expected)


def test_a_failed_export_is_reported_and_a_dead_child_replaced(
        receiver: OTLPReceiver) -> None:
    exporter = ProcessSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
    try:
        assert exporter.started()
        first = exporter._child
        assert first is not None
        first.kill()
        first.wait()
        assert exporter.export([span(0)]) is SpanExportResult.SUCCESS  # a new child
        assert exporter._child is not first
        assert exporter.started()  # ... which takes the next batch
        assert exporter.export([span(2)]) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    dead = ProcessSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", timeout=0.5)
    try:
        assert dead.export([span(1)]) is SpanExportResult.FAILURE  # nothing listens
    finally:
        dead.shutdown()
    assert len(receiver.spans()) == 2


PARENT = """
import sys, time
from stalwart.telemetry import ProcessSpanExporter
exporter = ProcessSpanExporter(endpoint=sys.argv[1])
print(exporter._child.pid, flush=True)
time.sleep(60)
"""


def test_the_child_exits_when_its_parent_is_killed(tmp_path: Path,
                                                   receiver: OTLPReceiver) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, str(script), f"{receiver.endpoint}/v1/traces"],
                              stdout=subprocess.PIPE, env=env, text=True)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return  # gone: no orphan left behind
        try:  # reap it if it is ours (it is not: its parent was killed)
            os.waitpid(child_pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    os.kill(child_pid, signal.SIGKILL)
    pytest.fail("the export process outlived its parent")


@pytest.mark.parametrize("ctx", [
    SpanContext(7, 8, False, TraceFlags(TraceFlags.SAMPLED)),
    SpanContext(2**128 - 1, 2**64 - 1, True, TraceFlags(TraceFlags.DEFAULT),
                TraceState([("k", "v"), ("a", "b")])),
])
def test_contexts_are_packed_from_their_fields(ctx: SpanContext) -> None:
    """``_context`` reads a SpanContext as a tuple: its layout is the properties'."""
    assert _context(ctx) == (ctx.trace_id, ctx.span_id, ctx.is_remote, int(ctx.trace_flags),
                             tuple(ctx.trace_state.items()))
    assert _context(None) is None


def test_configure_rejects_an_unknown_export_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STALWART_SPAN_EXPORT", "elsewhere")
    with pytest.raises(sw.ConfigurationError, match="STALWART_SPAN_EXPORT"):
        configure(set_global=False)


def test_the_batch_processor_drives_it(receiver: OTLPReceiver) -> None:
    provider = TracerProvider()
    exporter = ProcessSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
    assert exporter.started()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("user")
    for i in range(700):
        with tracer.start_as_current_span(f"s{i}"):
            pass
    assert provider.force_flush()
    provider.shutdown()
    assert len(receiver.spans()) == 700


FORKS = """
import os, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from stalwart.telemetry import ProcessSpanExporter

memory = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(memory))
for name in ("before", "in the fork", "after"):
    provider.get_tracer("t").start_span(name).end()
before, forked, after = memory.get_finished_spans()
exporter = ProcessSpanExporter(endpoint=sys.argv[1])
assert exporter.started()
assert exporter.export([before]).name == "SUCCESS"
first = exporter._child.pid
pid = os.fork()
if pid == 0:
    ok = (exporter.started() and exporter.export([forked]).name == "SUCCESS"
          and exporter._child.pid != first)
    exporter.shutdown()
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert exporter.export([after]).name == "SUCCESS" and exporter._child.pid == first
exporter.shutdown()
print("ok")
"""


def test_a_forked_process_exports_through_a_child_of_its_own(
        tmp_path: Path, receiver: OTLPReceiver) -> None:
    """After a fork (a pre-forking server), the copy starts its own export child instead
    of writing into the pipes of its parent's: both go on exporting."""
    script = tmp_path / "forks.py"
    script.write_text(FORKS)
    done = subprocess.run([sys.executable, str(script), f"{receiver.endpoint}/v1/traces"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert "exited" not in done.stderr  # the fork's copy knew the child was not its own
    assert sorted(s.name for s in receiver.spans()) == ["after", "before", "in the fork"]


@pytest.mark.parametrize("exited_first", [False, True], ids=["racing", "exited-first"])
@pytest.mark.parametrize("python", ["/nonexistent/python", "/bin/false"])
def test_where_no_child_can_run_spans_are_exported_in_this_process(
        python: str, exited_first: bool, receiver: OTLPReceiver,
        caplog: pytest.LogCaptureFixture) -> None:
    """Spawning fails, or the "interpreter" exits at once: the batches go out from this
    process instead, with a warning, and no child is started again for each batch.
    ``exited-first``: the child is gone before anything looks at it, which is not a
    crash to start another for (it never answered its config)."""
    exporter = ProcessSpanExporter(python=python, endpoint=f"{receiver.endpoint}/v1/traces")
    try:
        if exited_first and exporter._child is not None:
            exporter._child.wait(30)
        assert not exporter.started()
        assert exporter.export([span(0)]) is SpanExportResult.SUCCESS
        assert exporter._child is None
        assert exporter.export([span(1)]) is SpanExportResult.SUCCESS
        assert exporter._child is None
    finally:
        exporter.shutdown()
    assert [s.name for s in receiver.spans()] == ["step 0", "step 1"]
    assert sum("exporting spans in this process instead" in r.getMessage()
               for r in caplog.records) == 1
    assert not any("starting another" in r.getMessage() for r in caplog.records)


def test_batches_go_out_from_this_process_while_the_child_is_starting(
        tmp_path: Path, receiver: OTLPReceiver) -> None:
    """A busy start does not wait for the child's imports (nor let the processor's
    queue fill and drop): the first batches are exported here, then the child takes
    over."""
    slow = tmp_path / "slow-python"
    slow.write_text(f"#!/bin/sh\nsleep 1\nexec {sys.executable} \"$@\"\n")
    slow.chmod(0o755)
    exporter = ProcessSpanExporter(python=str(slow),
                                   endpoint=f"{receiver.endpoint}/v1/traces")
    try:
        assert exporter.export([span(0)]) is SpanExportResult.SUCCESS
        assert exporter._local is not None and exporter._starting  # sent from here
        assert exporter.started()
        local = exporter._local
        assert exporter.export([span(1)]) is SpanExportResult.SUCCESS
        assert exporter._local is local and not exporter._starting
        assert exporter._tables._resources  # packed for the child: it took this one
    finally:
        exporter.shutdown()
    assert sorted(s.name for s in receiver.spans()) == ["step 0", "step 1"]


def test_arguments_the_child_cannot_build_an_exporter_from_fail_every_export(
        receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture) -> None:
    exporter = ProcessSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces",
                                   no_such_argument=1)
    try:
        assert exporter.export([span(0)]) is SpanExportResult.FAILURE
        child = exporter._child
        assert exporter.export([span(1)]) is SpanExportResult.FAILURE
        assert exporter._child is child  # no new child tried for every batch
    finally:
        exporter.shutdown()
    assert receiver.spans() == []
    assert any("cannot build the OTLP exporter" in r.getMessage() for r in caplog.records)


def test_configure_exports_from_a_child_where_more_than_one_cpu_is_there(
        monkeypatch: pytest.MonkeyPatch, receiver: OTLPReceiver) -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor as Batch

    from stalwart.telemetry import _otlp, _setup

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.delenv("STALWART_SPAN_EXPORT", raising=False)
    for cpus, expected in ((1, _otlp.OTLPSpanExporter), (2, ProcessSpanExporter)):
        monkeypatch.setattr(_setup, "_cpus", lambda cpus=cpus: cpus)
        providers = configure(set_global=False)
        assert providers is not None
        try:
            (processor,) = providers.tracer_provider._active_span_processor._span_processors
            assert isinstance(processor, Batch)
            assert type(processor.span_exporter) is expected
        finally:
            providers.tracer_provider.shutdown()
            providers.meter_provider.shutdown()
    monkeypatch.setenv("STALWART_SPAN_EXPORT", "thread")
    assert _setup._where(None) == "thread"


def test_the_child_runs_at_a_lower_priority(receiver: OTLPReceiver) -> None:
    """Export is background work: the child yields the CPU to the runs it traces."""
    for niceness in (10, 0):
        exporter = ProcessSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces",
                                       niceness=niceness)
        try:
            assert exporter.started()
            assert exporter.export([span(niceness)]) is SpanExportResult.SUCCESS
            assert exporter._child is not None
            assert (os.getpriority(os.PRIO_PROCESS, exporter._child.pid)
                    == min(19, os.getpriority(os.PRIO_PROCESS, 0) + niceness))
        finally:
            exporter.shutdown()

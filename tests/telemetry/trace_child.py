"""The traced process that ``test_crash_resume.py`` kills and starts again.

``python trace_child.py STORE SPANS_FILE RUN_ID [KILL_AT]`` starts (or resumes) one run
of ``traced`` on the SQLite journal ``STORE`` with tracing on, and exports every ended
span as one fsync'ed JSON line to ``SPANS_FILE`` (a real SDK exporter, synchronous, so a
span is on disk once it has ended). The step ``KILL_AT`` (default ``b1``, after ``a1..a3``
and an agent were journaled and exported; or ``lookup``, the agent's tool, mid-agent)
SIGKILLs its own process the first time it runs (a marker file beside the spans
remembers it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import stalwart as sw
from stalwart.models import ModelRequest, ToolCallRequest
from stalwart.telemetry import Tracing


class FileExporter(SpanExporter):
    """One JSON line per span: name, ids, parent, this process's pid."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for s in spans:
            line = json.dumps({
                "name": s.name, "trace_id": s.context.trace_id, "span_id": s.context.span_id,
                "parent": s.parent.span_id if s.parent is not None else None,
                "pid": os.getpid(), "start": s.start_time, "end": s.end_time,
                "attributes": dict(s.attributes or {})}, default=str)
            os.write(self.fd, (line + "\n").encode())
        os.fsync(self.fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        os.close(self.fd)


MARKER: Path | None = None
KILL_AT = "b1"


def die_once_at(label: str) -> None:
    if label == KILL_AT and MARKER is not None and not MARKER.exists():
        MARKER.write_text("killed once")
        os.kill(os.getpid(), signal.SIGKILL)


def work(label: str) -> str:
    die_once_at(label)
    return label.upper()


def script(request: ModelRequest) -> str | ToolCallRequest:
    if request.messages[-1].role == "user":
        return ToolCallRequest.create("call-1", "lookup", {"q": "moon"})
    return "the moon is bright"


def lookup(q: str) -> str:
    die_once_at("lookup")
    return f"{q}: bright"


agent = sw.Agent("scout", "sim:scout", tools=[sw.Tool(lookup)])


async def _traced(ctx: sw.Context) -> str:
    out = [await ctx.step(work, label, name=label) for label in ("a1", "a2", "a3")]
    out.append(await agent.run(ctx, "how is the moon?"))
    out += [await ctx.step(work, label, name=label) for label in ("b1", "b2")]
    return " ".join(out)


traced = sw.Workflow(_traced, name="traced")


async def main(store: str, spans: Path, run_id: str) -> str:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter(spans)))
    app = sw.Runtime(store, poll_interval=0.1, tracing=Tracing(tracer_provider=provider,
                                                               metrics=False),
                     models={"sim:scout": sw.SimulatedModel("scout", script=script)})
    try:
        handle = await app.start(traced, run_id=run_id)
        result: str = await handle.result(timeout=60)
    finally:
        await app.close()
        provider.shutdown()
    return result


if __name__ == "__main__":
    store_path, spans_path, rid = sys.argv[1:4]
    KILL_AT = sys.argv[4] if len(sys.argv) > 4 else KILL_AT
    MARKER = Path(spans_path).with_suffix(".killed")
    print(json.dumps(asyncio.run(main(store_path, Path(spans_path), rid))), flush=True)

"""Direct spans go into the SDK batch processor's queue as its own ``emit`` puts them.

``_spans._queue_of`` runs the batch processor's ``emit`` without the system call its fork
check makes a span. These tests drive it and the SDK's ``emit`` side by side, on two
processors set up alike, and compare what each processor then exports or drops.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanContext

from stalwart.telemetry import _spans


class Recorder(SpanExporter):
    """Keeps each batch's span names; ``gate``, while clear, holds every export."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.exported = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.gate.wait(10)
        self.batches.append([s.name for s in spans])
        self.exported.set()
        return SpanExportResult.SUCCESS


def _span(n: int) -> ReadableSpan:
    return ReadableSpan(name=f"s{n}", context=SpanContext(1, n + 1, False))


def _pair(**options: float,
          ) -> tuple[list[tuple[Recorder, BatchSpanProcessor]], list[Callable[..., None]]]:
    """Two processors alike: one fed by the fast path, one by the SDK's ``emit``."""
    made = []
    for _ in range(2):
        recorder = Recorder()
        made.append((recorder, BatchSpanProcessor(recorder, **options)))
    fast = _spans._queue_of(made[0][1]._batch_processor)
    assert fast != made[0][1]._batch_processor.emit, "the fast path must apply to this SDK"
    return made, [fast, made[1][1]._batch_processor.emit]


def _wait_for(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_a_full_batch_wakes_the_worker_and_a_partial_one_waits() -> None:
    made, emits = _pair(schedule_delay_millis=60_000, max_export_batch_size=4,
                        max_queue_size=16)
    try:
        for emit in emits:
            for n in range(3):
                emit(_span(n))
        time.sleep(0.1)
        assert [r.batches for r, _ in made] == [[], []]  # 3 of 4: no wake-up yet
        for emit in emits:
            emit(_span(3))
        for recorder, _ in made:
            assert recorder.exported.wait(10)
        assert made[0][0].batches == made[1][0].batches == [["s0", "s1", "s2", "s3"]]
    finally:
        for _, processor in made:
            processor.shutdown()


def test_a_full_queue_drops_through_the_sdk(caplog: pytest.LogCaptureFixture) -> None:
    made, emits = _pair(schedule_delay_millis=60_000, max_export_batch_size=2,
                        max_queue_size=4)
    try:
        for recorder, _ in made:
            recorder.gate.clear()  # the worker takes one batch and then waits
        for emit in emits:
            emit(_span(0))
            emit(_span(1))
        for _, processor in made:
            _wait_for(lambda p=processor: not p._batch_processor._queue)
        with caplog.at_level(logging.WARNING):
            for n in range(2, 8):  # 4 fit, 2 are dropped
                emits[0](_span(n))
        # The fast path handed the drops to the SDK, which warned (it may log a repeated
        # warning once only, so the SDK's own path is not asked for its warning).
        assert any("Queue full" in r.getMessage() for r in caplog.records)
        for n in range(2, 8):
            emits[1](_span(n))
        queued = [[s.name for s in p._batch_processor._queue] for _, p in made]
        assert queued[0] == queued[1] == ["s7", "s6", "s5", "s4"]
    finally:
        for recorder, processor in made:
            recorder.gate.set()
            processor.shutdown()


def test_after_shutdown_nothing_is_queued() -> None:
    made, emits = _pair(schedule_delay_millis=60_000, max_export_batch_size=4,
                        max_queue_size=16)
    for _, processor in made:
        processor.shutdown()
    for emit in emits:
        emit(_span(0))
    assert [len(p._batch_processor._queue) for _, p in made] == [0, 0]
    assert [r.batches for r, _ in made] == [[], []]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_knows_its_own_pid() -> None:
    """The fork check compares against ``_PID``: a child must see its own id there, or
    its spans would take the SDK's path (correct, only slower) for good."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, b"1" if _spans._PID[0] == os.getpid() else b"0")
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert _spans._PID[0] == os.getpid()

"""Tracing overhead: the core benchmark's W1 and W2 with tracing off and on, in one run.

    python bench/bench_tracing.py [--synchronous FULL|NORMAL|both] [--rounds N] [--repeat R]
                                  [--modes off,memory,otlp[,simple]] [--dir DIR]

For each SQLite ``synchronous`` setting it runs bench_core's workloads (its own
functions, on fresh files) three ways:

off     ``Runtime()`` without tracing (the baseline of the ratios);
memory  ``Tracing`` to the SDK's ``InMemorySpanExporter`` through the SDK's
        ``BatchSpanProcessor`` (the processor production uses), metrics to an
        ``InMemoryMetricReader``: making the spans, queueing them and keeping them all,
        without a transport;
simple  the same exporter through a synchronous ``SimpleSpanProcessor``, as tests set it
        up: each span is exported, on the event loop, as it ends (not a target row);
otlp    ``stalwart.telemetry.configure()`` from ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing
        at a local OTLP/HTTP receiver on 127.0.0.1 that this script starts in a process of
        its own (it decodes every protobuf payload): batched span export over HTTP and
        periodic metric export, as in production, with configure()'s defaults. Where
        this process may use more than one CPU that is ``export_from="auto"`` ->
        process: the batch processor hands its batches to a child process that encodes
        and posts them (``stalwart.telemetry.ProcessSpanExporter``), off this process's
        GIL; on one CPU, the thread (the header says which).
otlp-thread  the same with ``configure(export_from="thread")``: spans encoded and posted
        on the batch processor's thread, as the SDK does (not a target row: on one CPU
        it is what ``otlp`` does anyway, with more it is the default no longer).

The measurements are interleaved in ``--rounds`` rounds: each round measures bench_core's
floor (raw sqlite3, one row per transaction) and then each workload in every mode, the
order of the modes rotating from one round to the next. Within a round every mode is set
up once, and the workload runs once in each mode in turn, ``--repeat`` times over (fresh
files), so that the runs a ratio compares are seconds apart: on this machine
consecutive W2 runs without tracing ranged over 4,300-6,800 steps/s, and the speed
drifts by more than tracing costs within a few seconds. A mode's runs in a round are
summed as one measurement; its ratio is its throughput over ``off``'s in the same round.
The table prints the median ratio per mode, the spread of the ratios over the rounds,
and the median throughput, also as a multiple of the floor. Each mode's spans are
counted after each of its runs (one receiver a posting mode); the in-memory exporter
keeps all of a run's spans while the run runs and is emptied after it is counted, so
no other mode's run pays for the collector walking them. Every traced measurement
checks that the exporter got one span per step plus one per run. Target (memory and
otlp, the default): tracing keeps >= 0.90 of W2's throughput (costs <= 10 %).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).parent))
import bench_core as core

import stalwart as sw
from stalwart.telemetry import OTLPReceiver, Tracing, configure
from stalwart.telemetry._setup import _cpus, _where

MODES = ("off", "memory", "simple", "otlp", "otlp-thread")
DEFAULT_MODES = ("off", "memory", "otlp", "otlp-thread")
TARGET_MODES = ("memory", "otlp")
TARGET_W2 = 0.90


def _serve(conn: Connection) -> None:
    """The receiver process: an ``OTLPReceiver`` answering ``spans`` and ``requests``."""
    with OTLPReceiver() as receiver:
        conn.send(receiver.endpoint)
        while (command := conn.recv()) != "stop":
            conn.send(len(receiver.spans()) if command == "spans" else receiver.requests)


class Receiver:
    """An :class:`OTLPReceiver` in a process of its own, as a collector would be: the
    HTTP serving and protobuf decoding do not share this process's GIL."""

    def __init__(self) -> None:
        self._conn, theirs = multiprocessing.get_context("spawn").Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(theirs,), daemon=True)

    def __enter__(self) -> Receiver:
        self._process.start()
        self.endpoint: str = self._conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self._process.join(10)

    def spans(self) -> int:
        self._conn.send("spans")
        return int(self._conn.recv())

    @property
    def requests(self) -> int:
        self._conn.send("requests")
        return int(self._conn.recv())


@dataclass(frozen=True)
class Measured:
    mode: str
    result: core.Result
    spans: int | None


class Mode:
    """One way of running the workloads: a ``Tracing`` (or none), and the spans it got."""

    def __init__(self, name: str, receiver: Receiver | None) -> None:
        self.name = name
        self.receiver = receiver
        self.tracing: Tracing | None = None
        self._memory: InMemorySpanExporter | None = None
        self._providers: Any = None
        self._received = 0

    def __enter__(self) -> Mode:
        if self.name in ("memory", "simple"):
            self._memory = InMemorySpanExporter()
            # Not shut down at exit: the atexit hook would keep each measurement's
            # provider, and through it the exporter's spans, alive to the end.
            tp = TracerProvider(shutdown_on_exit=False)
            tp.add_span_processor(BatchSpanProcessor(self._memory) if self.name == "memory"
                                  else SimpleSpanProcessor(self._memory))
            mp = MeterProvider(metric_readers=[InMemoryMetricReader()],
                               shutdown_on_exit=False)
            self._providers = (tp, mp)
            self.tracing = Tracing(tracer_provider=tp, meter_provider=mp)
        elif self.name in ("otlp", "otlp-thread"):
            assert self.receiver is not None
            self._received = self.receiver.spans()
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.receiver.endpoint
            providers = configure(set_global=False, export_from="thread"
                                  if self.name == "otlp-thread" else None)
            assert providers is not None
            self._providers = (providers.tracer_provider, providers.meter_provider)
            self.tracing = Tracing(tracer_provider=providers.tracer_provider,
                                   meter_provider=providers.meter_provider)
        return self

    def spans(self) -> int | None:
        """Spans exported since the last call (after a flush), or None without tracing.
        The in-memory exporter is emptied: it keeps a run's spans while the run runs,
        and no later run pays for the collector walking them."""
        if self._providers is None:
            return None
        self._providers[0].force_flush()
        if self._memory is not None:
            got = len(self._memory.get_finished_spans())
            self._memory.clear()
            return got
        assert self.receiver is not None
        total = self.receiver.spans()
        got, self._received = total - self._received, total
        return got

    def __exit__(self, *exc: object) -> None:
        if self._providers is not None:
            for provider in self._providers:
                provider.shutdown()
        if self._memory is not None:
            self._memory.clear()


@contextlib.contextmanager
def runtimes_with(tracing: Tracing | None) -> Iterator[None]:
    """bench_core builds its own ``Runtime(store, ...)``; hand it ours with ``tracing``
    (the workloads stay bench_core's, line for line)."""
    original = core.Runtime
    core.Runtime = functools.partial(sw.Runtime, tracing=tracing)  # type: ignore[misc]
    try:
        yield
    finally:
        core.Runtime = original  # type: ignore[misc]


async def measure_round(workload: Callable[..., Any], folder: Path, tag: str,
                        synchronous: core.Sync, order: Sequence[str],
                        receivers: dict[str, Receiver], repeat: int) -> dict[str, Measured]:
    """``workload`` ``repeat`` times in every mode, each mode set up once: one run in each
    mode in turn (``order``), then again, so that the runs a ratio compares are seconds
    apart (this machine's speed drifts by more than the effect within a few seconds).
    Each mode's steps and seconds are summed, as one measurement. One untimed run comes
    first in every mode: what a process pays once (imports, the export child's start) is
    no part of a throughput."""
    results: dict[str, list[core.Result]] = {mode: [] for mode in order}
    spans: dict[str, int] = dict.fromkeys(order, 0)
    with contextlib.ExitStack() as stack:
        modes = {name: stack.enter_context(Mode(name, receivers.get(name)))
                 for name in order}
        for name, mode in modes.items():
            with runtimes_with(mode.tracing):
                await workload(folder / f"{name}-{tag}-warm.db", synchronous)
            mode.spans()
        for k in range(repeat):
            for name, mode in modes.items():
                gc.collect()  # no run pays for the garbage of the one before
                with runtimes_with(mode.tracing):
                    results[name].append(await workload(
                        folder / f"{name}-{tag}-{k}.db", synchronous))
                spans[name] += mode.spans() or 0
    measured: dict[str, Measured] = {}
    for name in order:
        first = results[name][0]
        result = core.Result(first.name, first.what, sum(r.steps for r in results[name]),
                             sum(r.seconds for r in results[name]))
        if name != "off":
            runs = repeat * (1 if result.name == "W1" else core.W2_RUNS)
            if spans[name] != result.steps + runs:
                raise SystemExit(f"{name} {result.name}: exported {spans[name]} spans, "
                                 f"expected {result.steps + runs}")
        measured[name] = Measured(name, result, None if name == "off" else spans[name])
    return measured


@dataclass
class Series:
    """One (workload, mode): its rate and its ratio to ``off`` in each round."""

    rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    steps: int = 0
    spans: int | None = None


async def measure(folder: Path, synchronous: core.Sync, rounds: int, repeat: int,
                  modes: Sequence[str], receivers: dict[str, Receiver],
                  ) -> tuple[list[float], dict[tuple[str, str], Series]]:
    """``rounds`` rounds of: the floor, then W1 and W2 in every mode, the modes' order
    rotating from round to round; each ratio is to ``off`` of the same round."""
    tag = synchronous.lower()
    floors: list[float] = []
    series: dict[tuple[str, str], Series] = {}
    for i in range(rounds):
        floors.append(core.floor(folder / f"floor-{tag}-{i}.db", synchronous,
                                 core.W1_STEPS).rate)
        order = [*modes[i % len(modes):], *modes[:i % len(modes)]]
        for wl_name, workload in (("W1", core.w1), ("W2", core.w2)):
            got = await measure_round(workload, folder, f"{wl_name}-{tag}-{i}", synchronous,
                                      order, receivers, repeat)
            for mode, m in got.items():
                s = series.setdefault((wl_name, mode), Series())
                s.rates.append(m.result.rate)
                s.ratios.append(m.result.rate / got["off"].result.rate)
                s.steps, s.spans = m.result.steps, m.spans
    return floors, series


def table(synchronous: core.Sync, modes: Sequence[str], floors: list[float],
          series: dict[tuple[str, str], Series]) -> tuple[str, bool]:
    floor = statistics.median(floors)
    lines = [f"synchronous={synchronous} (WAL)",
             f"  {'':5}  {'tracing':11} {'steps':>6} {'spans':>6} {'steps/s':>9} "
             f"{'x floor':>7} {'x off':>6}  {'x off range':11}  {'target':12}",
             f"  {'FLOOR':5}  {'raw sqlite3, 1 row per txn':38} {floor:>9,.0f} {1:>7.2f}"]
    missed = False
    for wl in ("W1", "W2"):
        for mode in modes:
            s = series[(wl, mode)]
            ratio = statistics.median(s.ratios)
            rate = statistics.median(s.rates)
            target = ""
            if wl == "W2" and mode in (*TARGET_MODES, "otlp-thread"):
                ok = ratio >= TARGET_W2
                if mode in TARGET_MODES:
                    missed |= not ok
                target = f">={TARGET_W2:.2f} {'ok' if ok else 'MISS'}"
                if mode not in TARGET_MODES:
                    target = f"({target})"
            spans = "" if s.spans is None else str(s.spans)
            spread = "" if mode == "off" else f"{min(s.ratios):.2f}-{max(s.ratios):.2f}"
            lines.append(f"  {wl:5}  {mode:11} {s.steps:>6} {spans:>6} {rate:>9,.0f} "
                         f"{rate / floor:>7.2f} {ratio:>6.3f}  {spread:11}  {target:12}")
    return "\n".join(lines), missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL", "both"], default="both",
                        type=str.upper)
    parser.add_argument("--rounds", type=int, default=9,
                        help="rounds of every (workload, mode); medians are reported")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of a workload, back to back, in one measurement")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help=f"comma-separated, from {', '.join(MODES)} (off is always run)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to put the fresh database files (default: a temp dir)")
    args = parser.parse_args(argv)
    settings: list[core.Sync] = (["FULL", "NORMAL"] if args.synchronous == "BOTH"
                                 else [args.synchronous])
    os.environ.setdefault("OTEL_SERVICE_NAME", "stalwart-bench")
    rounds, repeat = max(1, args.rounds), max(1, args.repeat)
    modes = ["off", *(m for m in MODES[1:] if m in args.modes.split(","))]
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    print(core.header().replace("bench_core", "bench_tracing")
          + f"  (median of {rounds} rounds; each measurement {repeat} runs of a workload, "
            "interleaved run by run with the other modes')")
    missed = False
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        # One receiver a mode that posts, so each mode's spans are counted apart.
        receivers = {mode: stack.enter_context(Receiver())
                     for mode in modes if mode in ("otlp", "otlp-thread")}
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="stalwart-bench-",
                                                              dir=args.dir))
        where = ", ".join(f"{mode} {r.endpoint}" for mode, r in receivers.items())
        print(f"OTLP/HTTP receivers: {where or 'none'}; otlp: configure() exports spans "
              f"from {_where(None)} here ({_cpus()} CPUs, STALWART_SPAN_EXPORT="
              f"{os.environ.get('STALWART_SPAN_EXPORT') or 'auto'})")
        for synchronous in settings:
            floors, series = asyncio.run(measure(Path(tmp), synchronous, rounds, repeat,
                                                 modes, receivers))
            text, miss = table(synchronous, modes, floors, series)
            missed |= miss
            print()
            print(text, flush=True)
        requests = sum(r.requests for r in receivers.values())
        spans = sum(r.spans() for r in receivers.values())
        print(f"\nreceivers: {requests} OTLP requests decoded, {spans:,} spans; "
              f"{time.perf_counter() - t0:.0f} s in all")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

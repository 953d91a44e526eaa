"""State graphs against LangGraph: steps per second and journal bytes, in one run.

    pip install -e '.[bench]'      # langgraph, langgraph-checkpoint-sqlite (the anchor)
    python bench/bench_graph.py [--iterations 500] [--bytes-iterations 200] [--repeat 3]

The anchor is LangGraph's ``StateGraph`` with its ``SqliteSaver`` checkpointer, measured
in the same run, on the same disk, with the same graph: an agent loop whose one node is
re-entered ``--iterations`` times (a conditional edge back to itself until the count is
reached), appending one ~160-byte message per turn to a list with an ``operator.add``
reducer.

Fairness. Both persist every superstep before the next one starts: LangGraph runs with
``durability="sync"`` (its default, ``"async"``, writes a checkpoint while the next step
already runs), stalwart journals each node's step before the run goes on. Both use
SQLite in WAL mode with the same ``synchronous`` setting, run at FULL (stalwart's
default) and at NORMAL (LangGraph's PRAGMA is read back from its connection, stalwart's
is what its store was given; the store sets it on its connection). ``commits/step``
counts each library's write transactions per superstep (LangGraph's ``COMMIT``s through
a trace callback, stalwart's store's counter): at FULL each commit waits for the disk,
so their ratio bounds the speed-up there. Each
library runs its idiomatic fast path: LangGraph's synchronous ``invoke`` with a plain
function node, stalwart an ``async`` node inside a workflow (a sync node would go to the
thread pool). Each measurement is the best of ``--repeat`` on fresh files, the two
libraries' runs interleaved.

Targets (exit status 1 when one is missed):

* steps/s >= 5x LangGraph's, at each ``synchronous`` setting;
* journal bytes of a ``--bytes-iterations`` loop <= 3x the final state's size (its JSON).
  stalwart's bytes are every column of the run's rows (events and the run row: ids,
  names, digests, times, payloads), as SQLite's ``length()`` counts them; LangGraph's are
  every column of its ``checkpoints`` and ``writes`` rows for the thread. The workflow
  returns the last message, as an agent loop returns its answer; a workflow returning the
  whole final state journals it twice more (the run's result and its ``run_completed``
  event), printed below the gated figure, not gated.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import operator
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from pydantic import BaseModel

import stalwart as sw

STEP_TARGET = 5.0
BYTES_TARGET = 3.0
FILLER = "The tool returned 3 results; the next step reads the second one in full. " * 2


def message(n: int) -> str:
    return f"turn {n:04d}: {FILLER}"


# -- LangGraph ------------------------------------------------------------------------


class LGState(TypedDict):
    messages: Annotated[list[str], operator.add]
    n: int


def langgraph_run(path: Path, iterations: int, synchronous: str) -> tuple[float, dict[str, Any]]:
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph

    def agent(s: LGState) -> dict[str, Any]:
        return {"messages": [message(s["n"])], "n": s["n"] + 1}

    def more(s: LGState) -> Literal["agent", "__end__"]:
        return "agent" if s["n"] < iterations else END

    builder = StateGraph(LGState)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", more)
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    commits = [0]
    conn.set_trace_callback(lambda sql: commits.__setitem__(
        0, commits[0] + (sql.strip().upper().startswith("COMMIT"))))
    saver = SqliteSaver(conn)
    graph = builder.compile(checkpointer=saver)
    config: Any = {"configurable": {"thread_id": "bench"}, "recursion_limit": iterations + 10}
    t0 = time.perf_counter()
    out = graph.invoke({"messages": [], "n": 0}, config, durability="sync")
    elapsed = time.perf_counter() - t0
    assert out["n"] == iterations
    assert len(out["messages"]) == iterations
    conn.set_trace_callback(None)
    info = {
        "commits": commits[0],
        "synchronous": conn.execute("PRAGMA synchronous").fetchone()[0],
        "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
        "bytes": _table_bytes(conn, "checkpoints", "thread_id = 'bench'")
        + _table_bytes(conn, "writes", "thread_id = 'bench'"),
        "final": out,
    }
    conn.close()
    return elapsed, info


# -- stalwart -------------------------------------------------------------------------


class State(BaseModel):
    messages: Annotated[list[str], operator.add] = []
    n: int = 0


def stalwart_graph(iterations: int) -> sw.CompiledGraph[State]:
    async def agent(s: State) -> dict[str, Any]:
        return {"messages": [message(s.n)], "n": s.n + 1}

    def more(s: State) -> Literal["agent", "__end__"]:
        return "agent" if s.n < iterations else sw.END

    graph = sw.Graph(State, name="agent_loop")
    graph.node(agent)
    graph.edge(sw.START, "agent")
    graph.conditional_edge("agent", more)
    return graph.compile(max_steps=iterations + 1)


async def stalwart_run(path: Path, iterations: int, synchronous: Any, *,
                       whole: bool = False) -> tuple[float, dict[str, Any]]:
    flow = stalwart_graph(iterations)
    store = sw.SQLiteStore(path, synchronous=synchronous)
    app = sw.Runtime(store=store)

    @app.workflow(name="answer")
    async def answer(ctx: sw.Context, state: State) -> str:
        return (await flow.run(ctx, state)).messages[-1]

    @app.workflow(name="whole")
    async def whole_state(ctx: sw.Context, state: State) -> State:
        return await flow.run(ctx, state)

    async with app:
        t0 = time.perf_counter()
        before = store.commits
        handle = await app.start(whole_state if whole else answer, State(), run_id="bench")
        result = await handle.result()
        elapsed = time.perf_counter() - t0
        commits = store.commits - before
    final = result if whole else None
    conn = sqlite3.connect(path)
    info = {
        "commits": commits,
        "synchronous": synchronous,
        "bytes": _table_bytes(conn, "events", "run_id = 'bench'")
        + _table_bytes(conn, "runs", "run_id = 'bench'"),
        "final": final,
        "last": result if not whole else None,
    }
    conn.close()
    return elapsed, info


def _table_bytes(conn: sqlite3.Connection, table: str, where: str) -> int:
    cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    total = " + ".join(f"coalesce(length({c}), 0)" for c in cols)
    return int(conn.execute(f"SELECT coalesce(sum({total}), 0) FROM {table} WHERE {where}")
               .fetchone()[0])


def final_state_bytes(iterations: int) -> int:
    state = State(messages=[message(i) for i in range(iterations)], n=iterations)
    return len(state.model_dump_json())


# -- the report -----------------------------------------------------------------------


def best_of_pairs(a: Any, b: Any, repeat: int) -> tuple[tuple[float, dict[str, Any]],
                                                         tuple[float, dict[str, Any]]]:
    """The best of ``repeat`` runs of each, interleaved (a, b, a, b...): on a shared
    machine the load then falls on both alike."""
    runs_a, runs_b = [], []
    for i in range(repeat):
        runs_a.append(a(i))
        runs_b.append(b(i))
    return min(runs_a, key=lambda r: r[0]), min(runs_b, key=lambda r: r[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--bytes-iterations", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import langgraph

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"stalwart bench_graph  {now}  {platform.machine()}, Python "
          f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, langgraph "
          f"{getattr(langgraph, '__version__', _version('langgraph'))}  "
          f"(best of {args.repeat})\n")
    missed = []
    n = args.iterations
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"agent loop: one node re-entered {n} times, every superstep persisted "
              "before the next")
        print(f"  {'synchronous':<12} {'library':<36} {'commits/step':>12} {'steps/s':>9} "
              f"{'x LangGraph':>12}  target")
        for mode in ("FULL", "NORMAL"):
            (lg_s, lg), (sw_s, st) = best_of_pairs(
                lambda i, m=mode: langgraph_run(root / f"lg-{m}-{i}.db", n, m),
                lambda i, m=mode: asyncio.run(stalwart_run(root / f"sw-{m}-{i}.db", n, m)),
                args.repeat)
            ratio = lg_s / sw_s
            ok = ratio >= STEP_TARGET
            if not ok:
                missed.append(f"steps/s at {mode}: {ratio:.2f}x")
            lg_label = f"LangGraph SqliteSaver (PRAGMA {lg['synchronous']})"
            st_label = f"stalwart SQLiteStore({st['synchronous']})"
            print(f"  {mode:<12} {lg_label:<36} {lg['commits'] / n:>12.2f} "
                  f"{n / lg_s:>9,.0f} {1.0:>12.2f}")
            print(f"  {mode:<12} {st_label:<36} {st['commits'] / n:>12.2f} "
                  f"{n / sw_s:>9,.0f} {ratio:>12.2f}  >={STEP_TARGET:.0f}x "
                  f"{'ok' if ok else 'MISSED'}")

        b = args.bytes_iterations
        final = final_state_bytes(b)
        _, lg = langgraph_run(root / "lg-bytes.db", b, "FULL")
        _, st = asyncio.run(stalwart_run(root / "sw-bytes.db", b, "FULL"))
        _, whole = asyncio.run(stalwart_run(root / "sw-whole.db", b, "FULL", whole=True))
        assert st["last"] == message(b - 1)
        expected = State(messages=[message(i) for i in range(b)], n=b)
        assert whole["final"] == expected
        ratio = st["bytes"] / final
        ok = ratio <= BYTES_TARGET
        if not ok:
            missed.append(f"journal bytes: {ratio:.2f}x the final state")
        print(f"\njournal bytes of a {b}-iteration loop (a ~{len(message(0))}-byte message "
              f"a turn); final state {final:,} bytes (JSON)")
        print(f"  {'what':<52} {'bytes':>11} {'x state':>9}  target")
        print(f"  {'stalwart: deltas, run answers its last message':<52} {st['bytes']:>11,} "
              f"{ratio:>9.2f}  <={BYTES_TARGET:.0f}x {'ok' if ok else 'MISSED'}")
        print(f"  {'stalwart: deltas, run returns the whole state':<52} "
              f"{whole['bytes']:>11,} {whole['bytes'] / final:>9.2f}  (not gated)")
        print(f"  {'LangGraph SqliteSaver: checkpoints + writes':<52} {lg['bytes']:>11,} "
              f"{lg['bytes'] / final:>9.2f}")
    if missed:
        print("\nMISSED: " + "; ".join(missed))
        return 1
    print("\nall targets met")
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main())

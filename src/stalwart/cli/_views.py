"""``stalwart runs trace|replay|fork``: see a run, check today's code against it, and
try it again from a step."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.text import Text

from .._runtime import Runtime
from ..engine._timetravel import ReplayReport, fork_info
from ..engine._workflow import Workflow
from ..store._base import Event, RunRecord, RunStatus, Store
from ._common import (
    FAILURE,
    USAGE,
    CliError,
    JsonOption,
    StoreOption,
    client_runtime,
    command_store,
    error_json,
    executing_runtime,
    failure_line,
    print_json,
    run_async,
    store_hint,
)
from ._journal import open_journal
from ._loader import add_cwd_to_path, imported_workflows, resolve_ref
from ._output import console
from ._trace import build_trace, render_trace, trace_json

__all__ = ["fork", "replay", "replay_report", "start_fork", "trace"]

ImportOption = Annotated[list[str] | None, typer.Option(
    "--import", metavar="MODULE",
    help="Module (or MODULE:WORKFLOW) defining the workflow, when the run's own "
         "reference cannot be imported.")]


# -- trace ---------------------------------------------------------------------------


async def _load(rt: Runtime, run_id: str) -> tuple[RunRecord, list[Event]]:
    try:
        return await rt.get_run(run_id), await rt.events(run_id)
    finally:
        await rt.close()


def trace(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to trace.")],
    as_json: JsonOption = False,
    store: StoreOption = None,
) -> None:
    """A waterfall tree of a run, with durations, attempts, tokens and cost.

    Steps, agents, model and tool calls nest as the run nested them (gather branches as
    children)."""
    rt = client_runtime(store)
    rec, events = run_async(_load(rt, run_id))
    root = build_trace(rec, events, rt.prices)
    if as_json:
        print_json(trace_json(root, events))
        return
    render_trace(console(), root, fork_info(events))


# -- replay --------------------------------------------------------------------------


def _workflow_for(rec: RunRecord, imported: list[Workflow[Any, Any]]) -> Workflow[Any, Any]:
    for wf in imported:
        if wf.name == rec.workflow:
            return wf
    if rec.workflow_ref is None:
        raise CliError(f"run {rec.run_id} does not say where workflow {rec.workflow!r} is "
                       "defined; pass --import MODULE")
    try:
        wf = resolve_ref(rec.workflow_ref)
    except CliError as exc:
        raise CliError(f"{exc}; pass --import MODULE") from None
    if wf.name != rec.workflow:
        raise CliError(f"{rec.workflow_ref} is now named {wf.name!r}, not {rec.workflow!r}; "
                       "pass --import MODULE")
    return wf


async def replay_report(store: str | None, run_id: str, imports: list[str]) -> ReplayReport:
    """Replay a run's journal with today's code (imported from ``imports``, else from the
    run's own reference), calling nothing; the journal is only read."""
    add_cwd_to_path()
    imported = imported_workflows(imports)
    rt = client_runtime(command_store(store, imported))
    try:
        rec = await rt.get_run(run_id)
        rt.register(_workflow_for(rec, imported))
        return await rt.replay(run_id)
    finally:
        await rt.close()


def replay(
    run_id: Annotated[str, typer.Argument(
        metavar="RUN_ID", help="The run whose journal to replay.")],
    imports: ImportOption = None,
    as_json: JsonOption = False,
    store: StoreOption = None,
) -> None:
    """Replay a run's journal with today's code, calling nothing: still deterministic?

    Exits 1 when the code diverges from the journal (a step added, renamed or dropped, or
    another outcome)."""
    report = run_async(replay_report(store, run_id, imports or []))
    if as_json:
        print_json(report.as_json())
    else:
        out = console()
        verdict = (Text("deterministic", style="green") if report.deterministic
                   else Text("DIVERGES", style="bold red"))
        out.print(Text.assemble(("replay ", "bold"), (report.run_id, "bold"), "  ", verdict))
        out.print(f"workflow {report.workflow}: recorded {report.recorded_status}, replay "
                  f"{report.replayed}; {report.steps_replayed} of {report.steps_recorded} "
                  "recorded steps reached, nothing executed")
        for d in report.divergences:
            out.print(Text(f"  {d}", style="red"), soft_wrap=True)
    if not report.deterministic:
        sys.exit(FAILURE)


# -- fork ----------------------------------------------------------------------------


async def start_fork(flag: str | None, run_id: str, at: str, model: str | None,
                     new_id: str | None, imports: list[str],
                     wait: bool) -> tuple[RunRecord, str | Store | None]:
    """Fork ``run_id`` at step ``at``: with ``wait``, execute the fork here until it ends;
    else only create it (a worker executes it)."""
    add_cwd_to_path()
    imported = imported_workflows(imports)  # in the loop, as every import (see _loader)
    store = command_store(flag, imported)
    probe = client_runtime(store)
    try:
        rec = await probe.get_run(run_id)
    finally:
        await probe.close()
    wf = _workflow_for(rec, imported) if wait else None
    # The fork executes with the settings of its workflow's runtime (budget, models...).
    rt = executing_runtime([] if wf is None else [wf], store, worker=wait,
                           register_worker=False)
    try:
        if wf is not None:
            rt.register(wf)
        await open_journal(rt)
        handle = await rt.fork(run_id, at=at, model=model, run_id_for_fork=new_id)
        if not wait:
            return await rt.get_run(handle.run_id), store
        return await rt.wait_for_end(handle.run_id), store
    finally:
        await rt.close()


def fork(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to fork.")],
    at: Annotated[str, typer.Option("--at", metavar="STEP_ID",
                                    help="Re-execute from this step (e.g. 4 or 3/1/2); "
                                         "recorded results before it are reused.")],
    model: Annotated[str | None, typer.Option(
        "--model", metavar="NAME",
        help="Run agent model turns from the fork step on with this model "
             "(e.g. sim:demo, openai:gpt-4.1-mini).")] = None,
    new_id: Annotated[str | None, typer.Option("--run-id", metavar="ID",
                                               help="The fork's run id.")]
    = None,
    no_wait: Annotated[bool, typer.Option(
        "--no-wait", help="Only create the fork; a worker (stalwart resume) executes it.")]
    = False,
    imports: ImportOption = None,
    as_json: JsonOption = False,
    store: StoreOption = None,
) -> None:
    """Start a run that reuses a run's results before a step and executes from there.

    Nothing external is called for the reused prefix; --model swaps the model of agent
    turns from the fork step on. The fork's journal records its origin."""
    if not at:
        raise CliError("--at needs a step id", USAGE)
    rec, where = run_async(start_fork(store, run_id, at, model, new_id, imports or [],
                                 not no_wait))
    if as_json:
        print_json({"run_id": rec.run_id, "forked_from": run_id, "at": at, "model": model,
                    "status": str(rec.status), "result": rec.result,
                    "error": error_json(rec)})
        return
    show = f"stalwart runs show {rec.run_id}{store_hint(where)}"
    if rec.status != RunStatus.COMPLETED and not no_wait:  # one line, as every error
        raise CliError(f"fork {failure_line(rec).removeprefix('run ')} (details: {show})",
                       FAILURE)
    sys.stderr.write(f"fork {rec.run_id} of {run_id} at step {at}"
                     + (f" with {model}" if model else "") + f": {rec.status}; inspect it "
                     f"with `{show}`\n")
    sys.stdout.write((rec.result or "null") + "\n" if rec.status == RunStatus.COMPLETED
                     else rec.run_id + "\n")

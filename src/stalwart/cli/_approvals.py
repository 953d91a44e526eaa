"""``stalwart approvals``, ``approve`` and ``deny``: human decisions on the approvals
runs wait for (``ctx.approval``), made through ``Runtime.approve`` / ``deny`` so the
rules (token, idempotence, finality) are the runtime's, in one place."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.text import Text

from ..engine._approval import ApprovalRequest, Decision
from ._common import JsonOption, StoreOption, client_runtime, fmt_time, print_json, run_async
from ._output import PlainOption, Rows, console

__all__ = ["approvals", "approve", "decide_approval", "deny", "pending_approvals"]


async def pending_approvals(store: str | None, run_id: str | None) -> list[ApprovalRequest]:
    """The approvals waiting for a decision (of ``run_id``, or of every unfinished run)."""
    rt = client_runtime(store)
    try:
        return await rt.approvals(run_id)
    finally:
        await rt.close()


async def decide_approval(store: str | None, run_id: str, which: str, approved: bool,
                          by: str | None, comment: str | None, token: str | None
                          ) -> Decision:
    """Approve or deny through ``Runtime.approve`` / ``deny`` (token, idempotence and
    finality are the runtime's rules)."""
    rt = client_runtime(store, read_only=False)
    try:
        decide = rt.approve if approved else rt.deny
        return await decide(run_id, which, by=by, comment=comment, token=token)
    finally:
        await rt.close()


def _short(value: object, width: int = 50) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def approvals(
    run_id: Annotated[str | None, typer.Argument(
        metavar="RUN_ID", help="Only this run's approvals.")] = None,
    as_json: JsonOption = False,
    plain: PlainOption = False,
    store: StoreOption = None,
) -> None:
    """Approvals waiting for a decision: run, step, name, the payload, its token."""
    found = run_async(pending_approvals(store, run_id))
    if as_json:
        print_json({"approvals": [r.as_json() for r in found]})
        return
    out = console()
    if not found:
        out.print("no approvals are waiting")
        return
    table = Rows(["run", "step", "name", "payload", "token", "asked", "deadline"])
    for r in found:
        table.add(r.run_id, r.step_id, r.name, _short(r.payload), r.token,
                  fmt_time(r.requested_at),
                  fmt_time(r.deadline) if r.deadline is not None else "-")
    table.print(out, plain=plain)
    if not plain:
        out.print(Text("decide with: stalwart approve|deny RUN_ID STEP --hash TOKEN "
                       "[--as NAME] [--comment TEXT]", style="dim"))


RunArg = Annotated[str, typer.Argument(metavar="RUN_ID", help="The waiting run.")]
StepArg = Annotated[str, typer.Argument(
    metavar="STEP", help="The approval's step id (or its name, when one is pending).")]
AsOption = Annotated[str | None, typer.Option(
    "--as", metavar="NAME", help="Who decides (default: your login name).")]
CommentOption = Annotated[str | None, typer.Option(
    "--comment", "-m", metavar="TEXT", help="Why, for the audit record.")]
HashOption = Annotated[str | None, typer.Option(
    "--hash", metavar="TOKEN",
    help="The token shown by `stalwart approvals`: the decision is refused if the "
         "payload changed since.")]


def _said(d: Decision, run_id: str, which: str) -> None:
    verb = "approved" if d.approved else "denied"
    console().print(Text(f"{which} of run {run_id}: {verb} by {d.by} at "
                         f"{fmt_time(d.at)} (token {d.token[:12]}...)"))


def approve(run_id: RunArg, step: StepArg, by: AsOption = None,
            comment: CommentOption = None, token: HashOption = None,
            store: StoreOption = None) -> None:
    """Approve what a run waits for; the run goes on (approving again changes nothing)."""
    _said(run_async(decide_approval(store, run_id, step, True, by, comment, token)), run_id, step)


def deny(run_id: RunArg, step: StepArg, by: AsOption = None,
         comment: CommentOption = None, token: HashOption = None,
         store: StoreOption = None) -> None:
    """Deny what a run waits for (final: it cannot be approved after)."""
    _said(run_async(decide_approval(store, run_id, step, False, by, comment, token)), run_id, step)

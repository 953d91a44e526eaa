"""Approvals from the command line: `stalwart approvals` lists what runs wait for,
`approve` / `deny` decide (bound to the token shown), bad input is one line, exit 2,
and nothing recorded changes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import stalwart as sw
from stalwart.cli import app as cli_app


def cli(*args: str) -> Result:
    return CliRunner().invoke(cli_app, list(args))


def make_app(store: str) -> tuple[sw.Runtime, Any]:
    app = sw.Runtime(store, park_after=0.0)

    @app.workflow(name="refund")
    async def refund(ctx: sw.Context, amount: int) -> dict[str, Any]:
        decision = await ctx.approval("refund", {"amount": amount})
        return {"approved": decision.approved, "by": decision.by,
                "comment": decision.comment}

    return app, refund


async def park(store: str, run_id: str, amount: int) -> None:
    """Start the run and leave once it is parked on its approval."""
    app, refund = make_app(store)
    async with app:
        await app.start(refund, amount, run_id=run_id)
        for _ in range(400):
            if (await app.get_run(run_id)).status == sw.RunStatus.WAITING:
                return
            await asyncio.sleep(0.05)  # the run parks on its own task
    raise AssertionError("the run did not park")


async def finish(store: str, run_id: str) -> Any:
    app, _ = make_app(store)
    async with app:
        await app.resume(run_id)
        return await app.handle(run_id).result(timeout=30)


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "journal.db")


def test_list_approve_and_resume(store: str) -> None:
    asyncio.run(park(store, "r1", 30))
    listed = cli("approvals", "--json", "--store", store)
    assert listed.exit_code == 0, listed.output
    [req] = json.loads(listed.stdout)["approvals"]
    assert (req["run_id"], req["name"], req["payload"]) == ("r1", "refund", {"amount": 30})
    table = cli("approvals", "--plain", "--store", store)
    assert "r1\t" + req["step_id"] + "\trefund" in table.stdout
    done = cli("approve", "r1", req["step_id"], "--hash", req["token"], "--as", "ana",
               "--comment", "fine", "--store", store)
    assert done.exit_code == 0, done.output
    assert "approved by ana" in done.stdout
    again = cli("approve", "r1", "refund", "--as", "bob", "--store", store)
    assert again.exit_code == 0 and "approved by ana" in again.stdout
    assert asyncio.run(finish(store, "r1")) == {"approved": True, "by": "ana",
                                                 "comment": "fine"}
    assert "no approvals are waiting" in cli("approvals", "--store", store).stdout


def test_bad_input_is_one_line_exit_2_and_changes_nothing(store: str) -> None:
    asyncio.run(park(store, "r1", 30))
    before = cli("runs", "events", "r1", "--json", "--store", store).stdout
    cases = {
        ("approve", "nope", "refund"): "no run 'nope'",
        ("approve", "r1", "refund-typo"): "has no approval 'refund-typo'",
        ("approve", "r1", "refund", "--hash", "0" * 64): "another payload",
    }
    for args, message in cases.items():
        res = cli(*args, "--store", store)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    denied = cli("deny", "r1", "refund", "--as", "ana", "--store", store)
    assert denied.exit_code == 0, denied.output
    late = cli("approve", "r1", "refund", "--store", store)
    assert late.exit_code == 2 and "denied by ana" in late.stderr
    after = json.loads(cli("runs", "events", "r1", "--json", "--store", store).stdout)
    assert len(after) == len(json.loads(before))
    assert asyncio.run(finish(store, "r1"))["approved"] is False

"""A recorded failure takes the same ``except`` branch on the first execution and on every
replay: builtins and stalwart errors as themselves, other types as RemoteError."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import stalwart as sw
from stalwart.store import EventKind


class PaymentDeclined(Exception):
    """A user error that declares what the journal keeps of it."""

    journal_attributes = ("code",)

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class BadInput(ValueError):
    """A user subclass of a builtin."""


RAISERS = {
    "builtin": lambda: ValueError("bad value"),
    "stalwart": lambda: sw.InvalidRequestError("400", status_code=400),
    "user": lambda: PaymentDeclined("card declined", 402),
    "user-valueerror": lambda: BadInput("not a number"),
}


def _branch(exc: Exception) -> str:
    """Which except branch the workflow below takes, and what it sees there."""
    if isinstance(exc, sw.RemoteError):
        return (f"remote {exc.type_name.rpartition('.')[2]} valueerror="
                f"{isinstance(exc, ValueError)} attrs={json.dumps(dict(exc.attributes))}")
    return f"{type(exc).__name__}: {exc}"


async def _until_status(app: sw.Runtime, run_id: str, status: sw.RunStatus) -> None:
    for _ in range(2000):
        rec = await app.store.get_run(run_id)
        if rec is not None and rec.status == status:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"run {run_id} never reached {status}")


@pytest.mark.parametrize("kind", list(RAISERS))
async def test_a_caught_step_failure_takes_the_same_branch_live_and_on_replay(
        tmp_path: Path, kind: str) -> None:
    """The branch taken live (journaled by a step) equals the one a new runtime takes
    when it replays the recorded failure."""
    db = tmp_path / "j.db"
    clock = sw.FakeClock()
    ran: list[str] = []

    def charge() -> None:
        ran.append("charge")
        raise RAISERS[kind]()

    def note(branch: str) -> str:
        return branch

    def make(app: sw.Runtime) -> sw.Workflow[..., str]:
        @app.workflow(name="pay")
        async def pay(ctx: sw.Context) -> list[str]:
            try:
                await ctx.step(charge)
                branch = "no error"
            except ValueError as exc:
                branch = "ValueError branch: " + _branch(exc)
            except sw.StalwartError as exc:  # RemoteError is one
                branch = "StalwartError branch: " + _branch(exc)
            except Exception as exc:
                branch = "Exception branch: " + _branch(exc)
            live = await ctx.step(note, branch)  # journaled: what the first run saw
            await ctx.sleep(60)
            return [live, branch]  # the second element is what the replay saw
        return pay  # type: ignore[return-value]

    app1 = sw.Runtime(db, clock=clock)
    wf = make(app1)
    async with app1:
        h = await app1.start(wf)
        await _until_status(app1, h.run_id, sw.RunStatus.SLEEPING)
    app2 = sw.Runtime(db, clock=clock)
    make(app2)
    async with app2:
        await clock.advance(60)
        live, replayed = await app2.handle(h.run_id).result()
    assert ran == ["charge"]
    assert live == replayed
    expected = {
        "builtin": "ValueError branch: ValueError: bad value",
        "stalwart": "StalwartError branch: InvalidRequestError: 400",
        "user": 'StalwartError branch: remote PaymentDeclined valueerror=False '
                'attrs={"code": 402}',
        "user-valueerror": "ValueError branch: remote BadInput valueerror=True attrs={}",
    }[kind]
    assert live == expected


async def test_a_failed_run_of_a_user_error_reports_it_as_a_remote_error(tmp_path: Path) -> None:
    """handle.result(): RunFailedError caused by a RemoteError naming the user's type."""
    app = sw.Runtime(tmp_path / "j.db")

    def charge() -> None:
        raise PaymentDeclined("card declined", 402)

    @app.workflow
    async def pay(ctx: sw.Context) -> None:
        await ctx.step(charge)

    async with app:
        h = await app.start(pay)
        with pytest.raises(sw.RunFailedError) as info:
            await h.result()
        rec = await app.get_run(h.run_id)
    cause = info.value.__cause__
    assert isinstance(cause, sw.RemoteError)
    assert cause.matches(PaymentDeclined)
    assert cause.attributes == {"code": 402}
    assert "raise PaymentDeclined" in cause.traceback
    assert info.value.error_type == f"{__name__}.PaymentDeclined"
    record = json.loads(rec.error or "{}")
    assert record["type"] == f"{__name__}.PaymentDeclined"
    assert "pickled" not in record


async def test_a_tool_that_gives_up_with_a_user_error_raises_the_remote_error(
        tmp_path: Path) -> None:
    """A tool call's non-retryable user error reaches the workflow as a RemoteError on
    the first execution too (what a replay will raise)."""
    app = sw.Runtime(tmp_path / "j.db")

    @app.tool
    def charge(amount: int) -> str:
        raise PaymentDeclined(f"declined {amount}", 402)

    @app.workflow
    async def pay(ctx: sw.Context) -> str:
        try:
            await ctx.tool(charge, amount=5)
        except PaymentDeclined:
            return "caught as PaymentDeclined (replay would differ)"
        except sw.RemoteError as exc:
            return f"{exc.type_name.rpartition('.')[2]} {exc.attributes['code']}"
        return "no error"

    async with app:
        h = await app.start(pay)
        assert await h.result() == "PaymentDeclined 402"
        events = await app.events(h.run_id)
    failed = [e for e in events if e.kind == EventKind.STEP_FAILED]
    assert json.loads(failed[0].payload or "{}")["attributes"] == {"code": 402}


@pytest.mark.parametrize("how", ["step", "tool"])
async def test_an_error_without_context_is_located_not_changed(tmp_path: Path,
                                                              how: str) -> None:
    """A stalwart error raised where no run is known (here by user code; a model adapter
    or a policy likewise) is journaled and raised to the workflow naming its run and
    step, and replayed the same; the error object that was raised is left as it was."""
    raised: list[sw.StalwartError] = []

    def refuse() -> str:
        err = sw.ConfigurationError("refused")
        raised.append(err)
        raise err

    app = sw.Runtime(tmp_path / "j.db")
    tool = sw.Tool(refuse, name="refuse", policy=sw.Policy(retry=None))

    @app.workflow
    async def located(ctx: sw.Context) -> list[str | None]:
        try:
            if how == "step":
                await ctx.step(refuse)
            else:
                await ctx.tool(tool)
        except sw.ConfigurationError as exc:
            return [exc.run_id, exc.step_id]
        return []

    async with app:
        handle = await app.start(located, run_id="r1")
        assert await handle.result() == ["r1", "1"]
        events = await app.events("r1")
    assert [(e.run_id, e.step_id) for e in raised] == [(None, None)]
    failed = [json.loads(e.payload or "{}") for e in events
              if e.kind == EventKind.STEP_FAILED]
    assert [(f["attributes"]["run_id"], f["attributes"]["step_id"]) for f in failed] == [
        ("r1", "1")]
    replay = await sw.Runtime(tmp_path / "j.db", worker=False).__aenter__()
    try:
        replay.register(located)
        report = await replay.replay("r1")
    finally:
        await replay.close()
    assert report.deterministic, report.divergences


def test_located_makes_a_copy_with_the_context_and_keeps_what_it_had() -> None:
    """``located`` fills in only what is missing, on a new error of the same type with
    the same attributes, cause and traceback; an error that says where it is comes back
    itself."""
    cause = ValueError("root")
    try:
        raise sw.RetryExhaustedError("gave up", attempts=3, errors=(cause,),
                                     reason="r") from cause
    except sw.RetryExhaustedError as exc:
        original = exc
    copy = original.located(run_id="r", step_id="4")
    assert copy is not original and type(copy) is sw.RetryExhaustedError
    assert (copy.run_id, copy.step_id, copy.attempts, copy.errors) == ("r", "4", 3, (cause,))
    assert copy.__cause__ is cause and copy.__traceback__ is original.__traceback__
    assert (original.run_id, original.step_id) == (None, None)
    assert copy.located(run_id="other", step_id="9") is copy
    assert copy.located(run_id="other") is copy

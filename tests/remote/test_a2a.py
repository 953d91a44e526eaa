"""A2A: a workflow served as an A2A agent (agent card, task lifecycle) and called from
another runtime as durable steps; the caller SIGKILLed mid-task resumes by re-attaching
to the remote task (the remote workflow ran once), in two processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import stalwart as sw
from stalwart.store._base import EventKind
from stalwart.testing import MemoryStore

from .conftest import free_port, wait_listening

pytestmark = pytest.mark.slow

APPS = Path(__file__).with_name("a2a_apps.py")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


async def test_a_workflow_served_and_called_in_process(tmp_path: Path) -> None:
    """The card describes the agent; a call is two journaled steps (send: the task id
    derived from the idempotency key; wait: the result); a failing workflow is a failed
    task, RemoteToolError at the caller."""
    port = free_port()
    async with sw.Runtime(MemoryStore()) as server_app, sw.Runtime(MemoryStore()) as app:

        @server_app.workflow(name="double")
        async def double(ctx: sw.Context, data: Any) -> Any:
            if data == "fail":
                raise ValueError("cannot double that")
            return {"doubled": [x * 2 for x in data["xs"]]}

        server = sw.A2AServer(server_app, double, name="doubler",
                              url=f"http://127.0.0.1:{port}/")
        remote = sw.A2AAgent(f"http://127.0.0.1:{port}", name="doubler")

        @app.workflow
        async def caller(ctx: sw.Context) -> list[str]:
            out = await remote.ask(ctx, {"xs": [1, 2, 3]})
            try:
                await remote.ask(ctx, "fail")
            except sw.RemoteToolError as exc:
                return [json.dumps(out), str(exc)]
            return [json.dumps(out), "no error"]

        async with server.serving(port=port):
            async with httpx.AsyncClient() as client:
                card = (await client.get(
                    f"http://127.0.0.1:{port}/.well-known/agent-card.json")).json()
            assert card["name"] == "doubler" and card["skills"][0]["id"] == "double"
            out, error = await app.run(caller, run_id="c1")
        assert json.loads(out) == {"doubled": [2, 4, 6]}
        assert "ended failed" in error and "ValueError: cannot double that" in error
        steps = [(e.name, json.loads(e.payload or "null")) for e in
                 await app.store.load_events("c1") if e.kind == EventKind.STEP_COMPLETED]
        assert steps[0] == ("tool:a2a_doubler_send", "task-sw-c1-1")
        assert steps[1][0] == "tool:a2a_doubler_wait"
        assert server.tasks_started == 2


def test_a_killed_caller_reattaches_to_the_remote_task(tmp_path: Path) -> None:
    """Server and caller in two processes; the caller is SIGKILLed while the remote
    workflow runs; the next caller process resumes: it sends nothing (the task id is
    journaled), waits on the same task, and the remote workflow ran once."""
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    server = subprocess.Popen([sys.executable, str(APPS), "server", str(tmp_path / "s.db"),
                               str(state), str(port)], env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, server)
        url = f"http://127.0.0.1:{port}/"
        argv = [sys.executable, str(APPS), "client", str(tmp_path / "c.db"), url]
        first = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (state / "started.jsonl").exists():
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the remote workflow never started"
            time.sleep(0.02)  # the server writes the file: no event crosses processes
        first.send_signal(signal.SIGKILL)
        first.communicate()
        assert first.returncode == -9
        (state / "release").write_text("go")
        second = subprocess.run(argv, env=_env(), capture_output=True, text=True,
                                timeout=90)
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout) == {  # nothing sent again: it re-attached
            "result": "answer to why is the sky blue?", "sent": 0}
        started = (state / "started.jsonl").read_text().splitlines()
        assert len(started) == 1  # one remote run, not restarted
    finally:
        server.kill()
        server.communicate()


async def test_the_send_step_reattaches_instead_of_sending_again() -> None:
    """The send step tried again with the same identity (a crash after the send, before
    it was journaled) finds the task its idempotency key names and sends nothing."""
    port = free_port()
    async with sw.Runtime(MemoryStore()) as server_app:

        @server_app.workflow(name="echo")
        async def echo(ctx: sw.Context, text: str) -> str:
            return text

        server = sw.A2AServer(server_app, echo, name="echo", url=f"http://127.0.0.1:{port}/")
        remote = sw.A2AAgent(f"http://127.0.0.1:{port}/", name="echo")
        call = sw.ToolCall("run-x", "7", remote.send_tool.name, 1)
        again = sw.ToolCall("run-x", "7", remote.send_tool.name, 2)
        async with server.serving(port=port):
            first = await remote.send_tool.fn({"message": "hi"}, call)
            second = await remote.send_tool.fn({"message": "hi"}, again)
            assert first == second == "task-sw-run-x-7"
            assert remote.sent == 1 and server.tasks_started == 1
            assert await remote.wait_tool.fn({"task_id": first}, call) == "hi"


async def test_an_a2a_cancel_cancels_the_tasks_run() -> None:
    """tasks/cancel over HTTP cancels the task's run (``a2a-<task id>``) and answers the
    task canceled; cancelling it again is task-not-cancelable, an unknown task is
    task-not-found, a completed one task-not-cancelable; a run cancelled by other means
    (``Runtime.cancel``) ends its task canceled, seen by the caller as RemoteToolError."""
    from a2a.client import ClientConfig, create_client
    from a2a.types import a2a_pb2 as pb
    from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError

    from stalwart.remote._a2a import run_id_for

    port = free_port()
    started: dict[str, asyncio.Event] = {}
    async with sw.Runtime(MemoryStore()) as server_app, sw.Runtime(MemoryStore()) as app:

        @server_app.workflow(name="hold")
        async def hold(ctx: sw.Context, text: str) -> str:
            if text == "quick":
                return "done"

            async def begin() -> str:
                started.setdefault(ctx.run_id, asyncio.Event()).set()
                return "ok"

            await ctx.step(begin, name="begin")
            return str(await ctx.wait_for_signal("go"))

        server = sw.A2AServer(server_app, hold, name="holder",
                              url=f"http://127.0.0.1:{port}/")
        remote = sw.A2AAgent(f"http://127.0.0.1:{port}/", name="holder", poll_interval=0.05)

        @app.workflow
        async def caller(ctx: sw.Context) -> str:
            try:
                return str(await remote.ask(ctx, "wait"))
            except sw.RemoteToolError as exc:
                return str(exc)

        def send(text: str, context_id: str, *, blocking: bool) -> pb.SendMessageRequest:
            return pb.SendMessageRequest(
                message=pb.Message(message_id=context_id, context_id=context_id,
                                   role=pb.ROLE_USER, parts=[pb.Part(text=text)]),
                configuration=pb.SendMessageConfiguration(return_immediately=not blocking))

        async def started_run(run_id: str) -> None:
            await asyncio.wait_for(started.setdefault(run_id, asyncio.Event()).wait(), 30)

        async with server.serving(port=port):
            client = await create_client(f"http://127.0.0.1:{port}/",
                                         ClientConfig(streaming=False))
            try:
                [sent] = [e async for e in client.send_message(send("wait", "ctx-a",
                                                                     blocking=False))]
                task_id = sent.task.id
                await started_run(run_id_for(task_id))
                task = await client.cancel_task(pb.CancelTaskRequest(id=task_id))
                assert task.id == task_id
                assert task.status.state == pb.TaskState.TASK_STATE_CANCELED
                with pytest.raises(sw.RunCancelledError):
                    await asyncio.wait_for(server_app.handle(run_id_for(task_id)).result(),
                                           30)
                assert (await server_app.get_run(run_id_for(task_id))).status == \
                    sw.RunStatus.CANCELLED
                fetched = await client.get_task(pb.GetTaskRequest(id=task_id))
                assert fetched.status.state == pb.TaskState.TASK_STATE_CANCELED
                with pytest.raises(TaskNotCancelableError):
                    await client.cancel_task(pb.CancelTaskRequest(id=task_id))
                with pytest.raises(TaskNotFoundError):
                    await client.cancel_task(pb.CancelTaskRequest(id="task-nobody"))
                [done] = [e async for e in client.send_message(send("quick", "ctx-b",
                                                                     blocking=True))]
                assert done.task.status.state == pb.TaskState.TASK_STATE_COMPLETED
                with pytest.raises(TaskNotCancelableError):
                    await client.cancel_task(pb.CancelTaskRequest(id=done.task.id))
            finally:
                await client.close()

            asking = asyncio.create_task(app.run(caller, run_id="c2"))
            await started_run(run_id_for("task-sw-c2-1"))
            await server_app.cancel(run_id_for("task-sw-c2-1"))
            answer = await asyncio.wait_for(asking, 30)
        assert "task-sw-c2-1 of agent 'holder' ended canceled" in answer, answer


def test_a_killed_server_answers_its_task_from_the_journal(tmp_path: Path, journal: str
                                                          ) -> None:
    """The server is SIGKILLed while its workflow runs and restarted on the same port
    and journal: its new runtime takes the run over, its task store answers the task
    from the run (the SDK's own store is in memory), the caller's wait gets the result,
    and the served workflow ran once (one start, one answer)."""
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    argv = [sys.executable, str(APPS), "server", journal, str(state), str(port)]

    def serve() -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        wait_listening(port, proc)
        return proc

    server = serve()
    caller = subprocess.Popen([sys.executable, str(APPS), "client", str(tmp_path / "c.db"),
                               f"http://127.0.0.1:{port}/"], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (state / "waiting").exists():  # its first step is journaled
            assert caller.poll() is None, caller.communicate()[1]
            assert time.monotonic() < deadline, "the remote workflow never started"
            time.sleep(0.02)  # the server writes the file: no event crosses processes
        server.send_signal(signal.SIGKILL)
        server.communicate()
        assert server.returncode == -9
        (state / "release").write_text("go")
        server = serve()
        out, err = caller.communicate(timeout=90)
        assert caller.returncode == 0, err
        assert json.loads(out) == {"result": "answer to why is the sky blue?", "sent": 1}
        assert len((state / "started.jsonl").read_text().splitlines()) == 1
        assert len((state / "answered.jsonl").read_text().splitlines()) == 1
    finally:
        caller.kill()
        caller.communicate()
        server.kill()
        server.communicate()


async def test_a_restarted_server_answers_ended_tasks_from_their_runs(journal: str
                                                                      ) -> None:
    """A fresh server (an empty in-memory task store) on the journal of one that ran
    tasks answers each from its run: completed with the result artifact as the executor
    builds it, failed with the error, canceled; a working one is working, and an A2A
    cancel of it cancels its run; a task with no run is task-not-found."""
    from a2a.client import ClientConfig, create_client
    from a2a.types import a2a_pb2 as pb
    from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError

    from stalwart.remote._a2a import run_id_for

    db = journal
    port = free_port()

    def declare(app: sw.Runtime) -> Any:
        @app.workflow(name="work")
        async def work(ctx: sw.Context, text: str) -> Any:
            if text == "fail":
                raise ValueError("cannot do that")
            if text in ("hold", "gone"):
                return await ctx.wait_for_signal("go")
            return {"did": text} if text == "data" else f"did {text}"

        return work

    async with sw.Runtime(db) as first:
        work = declare(first)
        for name in ("text", "data", "fail", "hold", "gone"):
            await first.start(work, name, run_id=run_id_for(f"task-{name}"))
        for name in ("text", "data", "fail"):
            with contextlib.suppress(sw.RunFailedError):
                await first.handle(run_id_for(f"task-{name}")).result(timeout=30)
        await first.cancel(run_id_for("task-gone"))
        with pytest.raises(sw.RunCancelledError):
            await first.handle(run_id_for("task-gone")).result(timeout=30)
    async with sw.Runtime(db, worker=False) as second:
        server = sw.A2AServer(second, declare(second), name="worker",
                              url=f"http://127.0.0.1:{port}/")
        async with server.serving(port=port):
            client = await create_client(f"http://127.0.0.1:{port}/",
                                         ClientConfig(streaming=False))
            try:
                async def get(name: str) -> Any:
                    return await client.get_task(pb.GetTaskRequest(id=f"task-{name}"))

                text, data, fail, hold, gone = [
                    await get(n) for n in ("text", "data", "fail", "hold", "gone")]
                assert text.context_id == "text"
                assert text.status.state == pb.TaskState.TASK_STATE_COMPLETED
                assert [(a.artifact_id, a.name, a.parts[0].text) for a in text.artifacts
                        ] == [("result", "result", "did text")]
                assert data.artifacts[0].parts[0].data.struct_value["did"] == "data"
                assert fail.status.state == pb.TaskState.TASK_STATE_FAILED
                assert "ValueError: cannot do that" in fail.status.message.parts[0].text
                assert gone.status.state == pb.TaskState.TASK_STATE_CANCELED
                assert hold.status.state == pb.TaskState.TASK_STATE_WORKING
                with pytest.raises(TaskNotFoundError):
                    await get("nobody")
                with pytest.raises(TaskNotCancelableError):
                    await client.cancel_task(pb.CancelTaskRequest(id="task-text"))
                cancelled = await client.cancel_task(pb.CancelTaskRequest(id="task-hold"))
                assert cancelled.status.state == pb.TaskState.TASK_STATE_CANCELED
                assert (await second.get_run(run_id_for("task-hold"))).cancel_requested
            finally:
                await client.close()


async def test_a_server_gone_between_polls_is_unavailable_not_a_failure() -> None:
    """The SDK wraps a refused connection in its own A2AClientError: it is still the
    agent being unreachable (retryable), not the task failing."""
    from a2a.client import ClientConfig, create_client
    from a2a.types import a2a_pb2 as pb

    from stalwart.remote._a2a import _as_error

    port = free_port()
    async with sw.Runtime(MemoryStore()) as server_app:

        @server_app.workflow(name="echo")
        async def echo(ctx: sw.Context, text: str) -> str:
            return text

        server = sw.A2AServer(server_app, echo, name="echo",
                              url=f"http://127.0.0.1:{port}/")
        async with server.serving(port=port):
            client = await create_client(f"http://127.0.0.1:{port}/",
                                         ClientConfig(streaming=False))
        try:
            with pytest.raises(Exception) as raised:
                await client.get_task(pb.GetTaskRequest(id="task-x"))
        finally:
            await client.close()
    error = _as_error("echo", "wait", raised.value)
    assert isinstance(error, sw.ToolServerUnavailableError), repr(error)

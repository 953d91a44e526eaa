"""Actors under SIGKILL, on SQLite and PostgreSQL, with real processes: a fleet of
workers killed at random while messages flow keeps each key's order and applies every
message exactly once; an ask whose process dies inside the handler gets its reply after
the restart, and the state counts the message once."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stalwart as sw

pytestmark = pytest.mark.slow

APP = Path(__file__).with_name("actor_app.py")
sys.path.insert(0, str(APP.parent))
from actor_app import Count, Msg, build  # noqa: E402


def spawn(store: str, *args: str, cwd: Path, env: dict[str, str] | None = None,
          ) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CRASH_")}
    full.update(env or {})
    return subprocess.Popen([sys.executable, str(APP), store, *args], cwd=cwd, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # reaped: a zombie would look alive


async def create_journal(store: str) -> None:
    app = sw.Runtime(store, worker=False)
    try:
        await app.store.open()  # a writer's first open makes the journal
    finally:
        await app.close()
    writer = sw.Runtime(store)
    await writer.open()
    await writer.close()


async def states(store: str, keys: list[str]) -> dict[str, Count]:
    app, counter, _ = build(store, worker=False)
    try:
        return {key: await app.actor_state(counter, key) for key in keys}
    finally:
        await app.close()


def exact(state: Count, n: int) -> bool:
    return (state.count == n and state.total == n * (n - 1) // 2 and state.last == n - 1
            and state.disorder == [])


def test_a_fleet_killed_at_random_keeps_order_and_applies_each_message_once(
        store_url: str, tmp_path: Path) -> None:
    """Three workers execute four keys' mailboxes while a client sends 40 messages per
    key (each with an id; a tenth sent twice); a worker is SIGKILLed and replaced every
    eight rounds of messages. At the end every key counted each message once, in order."""
    keys, n = ["a", "b", "c", "d"], 40
    asyncio.run(create_journal(store_url))
    workers = [spawn(store_url, "worker", cwd=tmp_path) for _ in range(3)]
    rng = random.Random(7)
    kills = 0

    async def send_all() -> None:
        nonlocal kills
        app, counter, _ = build(store_url, worker=False)
        try:
            for i in range(n):
                for key in keys:
                    await app.send(counter, key, Msg(seq=i), message_id=f"{key}-{i}")
                    if i % 10 == 3:  # a sender retrying after an error: the same id
                        await app.send(counter, key, Msg(seq=i), message_id=f"{key}-{i}")
                # Killed by progress, not by the clock: on a quiet machine every
                # message was sent before a timed kill came (CI saw one kill in all).
                if i % 8 == 5:
                    victim = rng.randrange(len(workers))
                    kill(workers[victim])
                    workers[victim] = spawn(store_url, "worker", cwd=tmp_path)
                    kills += 1
                await asyncio.sleep(0.01)
        finally:
            await app.close()

    try:
        asyncio.run(send_all())
        deadline = time.monotonic() + 120
        while True:
            found = asyncio.run(states(store_url, keys))
            if all(exact(s, n) for s in found.values()) or time.monotonic() > deadline:
                break
            if kills < 4:  # keep killing while the mailboxes drain
                victim = rng.randrange(len(workers))
                kill(workers[victim])
                workers[victim] = spawn(store_url, "worker", cwd=tmp_path)
                kills += 1
            time.sleep(0.3)
    finally:
        for proc in workers:
            kill(proc)
    assert kills >= 4
    assert {k: (s.count, s.total, s.last, s.disorder) for k, s in found.items()} == {
        k: (n, n * (n - 1) // 2, n - 1, []) for k in keys}


@pytest.mark.parametrize("crash_at", ["k:0", "k:3"])
def test_an_ask_survives_a_crash_inside_the_handler(
        store_url: str, tmp_path: Path, crash_at: str) -> None:
    """The process running both the asking workflow and the instance is SIGKILLed inside
    the handler (after its step, before the commit); the next process replays the step,
    commits once, and the asker gets every reply."""
    env = {"CRASH_AT": crash_at, "CRASH_MARKERS": str(tmp_path)}
    first = spawn(store_url, "ask", "k", "ask-1", "5", cwd=tmp_path, env=env)
    out, err = first.communicate(timeout=90)
    assert first.returncode == -signal.SIGKILL, err
    second = spawn(store_url, "ask", "k", "ask-1", "5", cwd=tmp_path, env=env)
    out, err = second.communicate(timeout=90)
    assert second.returncode == 0, err
    assert json.loads(out) == [1, 2, 3, 4, 5]
    assert exact(asyncio.run(states(store_url, ["k"]))["k"], 5)


@pytest.mark.parametrize("crash_at", ["k:0", "k:2"])
def test_an_app_ask_survives_a_crash_inside_the_handler(
        store_url: str, tmp_path: Path, crash_at: str) -> None:
    """app.ask from outside a workflow, the process SIGKILLed inside the handler: a new
    process asking again with the same ask ids gets every reply, and each message was
    applied once (the interrupted ask's run is taken over, not sent again)."""
    env = {"CRASH_AT": crash_at, "CRASH_MARKERS": str(tmp_path)}
    first = spawn(store_url, "app-ask", "k", "q", "5", cwd=tmp_path, env=env)
    out, err = first.communicate(timeout=90)
    assert first.returncode == -signal.SIGKILL, err
    second = spawn(store_url, "app-ask", "k", "q", "5", cwd=tmp_path, env=env)
    out, err = second.communicate(timeout=90)
    assert second.returncode == 0, err
    assert json.loads(out) == [1, 2, 3, 4, 5]
    assert exact(asyncio.run(states(store_url, ["k"]))["k"], 5)

"""Fixtures for the pattern tests: a journal on each real store (SQLite always,
PostgreSQL when ``STALWART_TEST_POSTGRES_URL`` names a database: a fresh schema per
test, dropped afterwards), and a driver for the crash tests' child process."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from stalwart.testing import postgres_schema

PG_ENV = "STALWART_TEST_POSTGRES_URL"
APP = Path(__file__).with_name("crash_app.py")


def _load_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stalwart_tests_patterns_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


crash_app = _load_app()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty journal: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield str(tmp_path / "journal.db")
        return
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"set {PG_ENV}=postgresql://... to run the PostgreSQL pattern tests")
    with postgres_schema(url, prefix="stalwart_patterns") as scoped:
        yield scoped


@dataclass
class Child:
    """Drives ``crash_app.py`` (or another app of the same command line, ``app``) on one
    journal and ledger."""

    store: str
    ledger: Path
    cwd: Path
    app: Path = APP

    def spawn(self, workflow: str, run_id: str, *, crash_at: str | None = None,
              extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRASH_")}
        env.update(extra_env or {})
        if crash_at is not None:
            env["CRASH_AT"] = crash_at
        return subprocess.Popen(
            [sys.executable, str(self.app), self.store, str(self.ledger), workflow, run_id],
            env=env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    def run(self, workflow: str, run_id: str, *, timeout: float = 90.0,
            **kw: object) -> tuple[int, str, str]:
        proc = self.spawn(workflow, run_id, **kw)  # type: ignore[arg-type]
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err

    def raw_lines(self) -> list[tuple[str, str]]:
        """(label, key) of every execution of an effect, in order."""
        return crash_app.raw_lines(self.ledger)  # type: ignore[no-any-return]

    def dedup_rows(self) -> list[tuple[str, str]]:
        """(label, key) of every effect a deduplicating service applied."""
        return crash_app.dedup_rows(self.ledger)  # type: ignore[no-any-return]

    def in_flight(self) -> set[str]:
        """The effects (``run:step`` keys) executed whose step has no outcome in the
        journal: in flight when the process died."""
        import asyncio

        import stalwart as sw
        from stalwart.store import EventKind

        async def read() -> set[str]:
            app = sw.Runtime(self.store, worker=False)
            try:
                out = set()
                for _, key in self.raw_lines():
                    run_id, _, step_id = key.rpartition(":")
                    if not [e for e in await app.events(run_id) if e.step_id == step_id
                            and e.kind in (EventKind.STEP_COMPLETED, EventKind.STEP_FAILED)]:
                        out.add(key)
                return out
            finally:
                await app.close()

        return asyncio.run(read())

    @staticmethod
    def kill(proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)  # reaped: a zombie would look alive


@pytest.fixture
def child(store_url: str, tmp_path: Path) -> Child:
    return Child(store_url, tmp_path / "ledger", tmp_path)

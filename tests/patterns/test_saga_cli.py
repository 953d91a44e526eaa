"""A saga whose compensation keeps failing, from the command line: `stalwart dlq show`
prints the saga's state, `stalwart dlq retry` goes on undoing once the service is back."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from stalwart.cli import app

MODULE = '''
from pathlib import Path

import stalwart as sw

app = sw.Runtime()
HERE = Path(__file__).parent


def book(item: str) -> str:
    if item == "car":
        raise ValueError("no cars left")
    return item


def cancel(ref: str) -> None:
    if not (HERE / "agency.up").exists():
        raise ConnectionError(f"the agency does not answer (cancel {ref})")
    with (HERE / "cancelled.log").open("a") as f:
        f.write(ref + "\\n")


undo = sw.Tool(cancel, name="cancel", policy=sw.Policy(
    retry=sw.Retry(max_attempts=2, initial=0.001, max_backoff=0.002)))


@app.workflow
async def trip(ctx: sw.Context) -> list[str]:
    async with ctx.saga() as saga:
        return [await saga.step(book, x, name=f"book {x}", compensate=undo)
                for x in ("flight", "hotel", "car")]
'''


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    module = f"saga_cli_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{module}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("STALWART_STORE", raising=False)
    yield tmp_path, module
    for name in [m for m in sys.modules if m == module]:
        del sys.modules[name]


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_dlq_show_prints_the_saga_state_and_retry_goes_on_undoing(
        project: tuple[Path, str]) -> None:
    """The hotel's cancellation fails twice: the run is dead-lettered at it; dlq show
    says what was done, undone and not undone (text and JSON); with the agency back,
    dlq retry cancels the hotel and the flight and the run fails with the car's error."""
    folder, module = project
    store = str(folder / "journal.db")
    ran = cli("run", f"{module}:trip", "--run-id", "t1", "--store", store)
    assert ran.exit_code == 1
    assert "dead_lettered" in ran.stderr and "CompensationFailedError" in ran.stderr
    shown = cli("dlq", "show", "t1", "--json", "--store", store)
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["saga"] == {"compensation": "cancel",
                            "done": ["book flight", "book hotel"], "undone": [],
                            "not_undone": ["book hotel", "book flight"],
                            "saga_error": "ValueError: no cars left"}
    assert data["attempts"] == 2
    text = cli("dlq", "show", "t1", "--store", store).stdout
    assert "saga (a compensation failed" in text
    assert "not undone         book hotel, book flight" in text
    assert not (folder / "cancelled.log").exists()
    (folder / "agency.up").touch()
    again = cli("dlq", "retry", "t1", "--store", store)
    assert again.exit_code == 1
    assert "ended failed: ValueError: no cars left" in again.stderr
    assert (folder / "cancelled.log").read_text().split() == ["hotel", "flight"]

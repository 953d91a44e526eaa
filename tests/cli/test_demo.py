"""``stalwart demo``: agents on faulty models, a real SIGKILL mid-run, a resume, and an
effect applied once."""

from __future__ import annotations

import json
import re
import sqlite3
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Cli, Project


@pytest.mark.slow
def test_the_demo_crashes_a_process_resumes_and_applies_the_effect_once(
        cli: Cli, project: Project) -> None:
    """Offline, no TTY, no stdin: exit 0; the output and the journal show one crash, the
    policies at work (retries, a breaker trip, fallbacks), the result and one effect."""
    proc = cli.script("demo", cwd=project.dir, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "SIGKILL" in out
    assert "replays from the journal, running nothing" in out
    assert "claims the run (execution #2): its timer is due" in out  # why it is claimed again
    assert "applied exactly once" in out
    assert "Traceback" not in out + proc.stderr
    match = re.search(r"stalwart runs show (demo-[0-9a-f]+) --store (\S+)", out)
    assert match, out
    run_id, store = match.groups()
    assert store == ".stalwart/demo.db" and (project.dir / store).exists()
    data = json.loads(cli("runs", "show", run_id, "--json", "--store", store).stdout)
    assert data["status"] == "completed"
    assert data["crashes"] == 1
    result = data["result"]
    assert result["deduplicated"] is True
    assert len(result["notes"]) == 3 and result["report"].startswith("Report")
    assert result["written_by"] == ["sim:writer-backup"]
    pids = {e["pid"] for e in data["executions"]}
    assert len(pids) == 2  # the killed child, then the demo's own process

    # What the policies did, as printed: the seeded faults tell the same story each time.
    counts = re.search(r"policy_counts: (.*?)  \(child pid", out)
    assert counts, out
    # (the researchers' 429 bursts hold their models three times; only the writer's
    # outage opens a breaker)
    assert counts.group(1) == ("backpressure_hold=3, breaker_open=1, breaker_rejected=2, "
                               "fallback=2, fallback_answered=2, retried=7")
    assert "429 x3, Retry-After 0.3s" in out and "500 x1" in out
    assert "sim:writer: 3 failed calls, then closed -> open; 2 later call(s) rejected" in out
    assert out.count("answered by sim:writer-backup") == 2
    assert "after resume:  no policy actions" in out
    assert re.search(r"policies: +7 retries, 2 calls refused by an open breaker, 2 turns "
                     r"answered by a fallback model", out)
    assert re.search(r"result: +\{\"topic\"", out)

    # ... and the journal agrees: every failed attempt is an attempt_failed event.
    events = json.loads(cli("runs", "events", run_id, "--json", "--store", store).stdout)
    failed = [json.loads(e["payload"]) for e in events if e["kind"] == "attempt_failed"]
    assert sum(f["next"] == "retry" for f in failed) == 7
    assert sum(f["next"] == "fallback" for f in failed) == 2
    assert sum(f["key"] == "sim:writer" and "CircuitOpenError" in f["error"]["type"]
               for f in failed) == 2


def test_the_demo_needs_a_file_store(cli: Cli, project: Project) -> None:
    """A server URL cannot be crashed locally: one line, exit 2."""
    line = cli.one_line_error(cli("demo", "--store", "postgresql://localhost/x"), 2)
    assert "needs an SQLite file" in line


def test_a_foreign_ledger_is_reported_not_used(cli: Cli, project: Project) -> None:
    """A file in the ledger's place that is not one: one line pointing at --fresh."""
    (project.dir / "d-ledger.db").write_text("not sqlite")
    line = cli.one_line_error(cli("demo", "--store", str(project.dir / "d.db")), 2)
    assert "is not a demo ledger" in line and "--fresh" in line


def test_a_foreign_file_at_the_store_path_is_refused_and_kept(cli: Cli, project: Project) -> None:
    """The user's own file where the journal would go: one line that does not offer
    --fresh; and --fresh itself refuses it, leaving it as it was."""
    notes = project.dir / "notes.txt"
    notes.write_text("my notes")
    line = cli.one_line_error(cli("demo", "--store", str(notes)), 2)
    assert "not a stalwart journal" in line and "demo --fresh` deletes" not in line
    line = cli.one_line_error(cli("demo", "--store", str(notes), "--fresh"), 2)
    assert "not a stalwart journal" in line and "--fresh deletes only" in line
    assert notes.read_text() == "my notes"
    assert sorted(p.name for p in project.dir.glob("notes*")) == ["notes.txt"]  # no ledger


def test_fresh_keeps_another_programs_sqlite_database(cli: Cli, project: Project) -> None:
    """--fresh on an SQLite file stalwart did not create: refused, not a row lost."""
    app_db = project.dir / "app.db"
    with sqlite3.connect(app_db) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ana')")
    conn.close()
    line = cli.one_line_error(cli("demo", "--store", str(app_db), "--fresh"), 2)
    assert "not a stalwart journal" in line
    with sqlite3.connect(app_db) as conn:
        assert conn.execute("SELECT name FROM users").fetchall() == [("ana",)]
    conn.close()


@pytest.mark.slow
def test_fresh_replaces_a_broken_journal_and_ledger(cli: Cli, project: Project) -> None:
    """--fresh deletes the old files first, so the demo runs (here, in this process)."""
    (project.dir / "d.db").write_bytes(b"SQLite format 3\x00" + b"\x07" * 5000)  # damaged
    (project.dir / "d-ledger.db").write_text("old ledger")
    result = cli("demo", "--store", str(project.dir / "d.db"), "--fresh")
    assert result.exit_code == 0, result.output
    assert "applied exactly once" in result.stdout


def test_a_look_at_the_default_journal_after_the_demo_points_at_the_demos(
        cli: Cli, project: Project) -> None:
    """``stalwart runs list`` with no journal of its own, beside the demo's: the one error
    line says where the demo's runs are; with no demo journal, no such hint."""
    line = cli.one_line_error(cli("runs", "list"), 2)
    assert "no stalwart journal at .stalwart/stalwart.db" in line and "demo" not in line
    (project.dir / ".stalwart").mkdir(exist_ok=True)
    (project.dir / ".stalwart" / "demo.db").touch()
    line = cli.one_line_error(cli("runs", "list"), 2)
    assert line.endswith("the demo's runs are in .stalwart/demo.db: --store .stalwart/demo.db")


def test_a_store_whose_folder_cannot_be_made_is_one_line_naming_it(
        cli: Cli, project: Project) -> None:
    """--store under a file (its folder cannot be made): the journal and the reason in
    one line, exit 2 (it was 'unexpected FileExistsError'; an unwritable folder said
    'run with --fresh', which cannot help)."""
    (project.dir / "afile").write_text("a file, not a folder")
    line = cli.one_line_error(cli("demo", "--store", str(project.dir / "afile" / "d.db")), 2)
    assert line == (f"error: cannot use the journal {project.dir / 'afile' / 'd.db'}: its "
                    f"folder {project.dir / 'afile'} cannot be created (File exists)")

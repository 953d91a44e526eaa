"""``stalwart board NAME``: entries with provenance, verification and poisoning, as a
table, as --plain rows and as --json; a bad pattern is one line and exit 2."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import stalwart as sw

from .conftest import Cli


def make_board(path: Path | str) -> None:
    """A board where b was built on a, and a was refuted; c verified; d taken."""
    app = sw.Runtime(str(path))
    board = sw.Blackboard("facts")

    @app.workflow
    async def fill(ctx: sw.Context) -> None:
        a = await board.post(ctx, "a", {"claim": "the moon is cheese"}, agent="scout",
                             model="sim:scout")
        await board.post(ctx, "b", "so: dairy moon", agent="writer", sources=[a])
        await board.post(ctx, "c", 42)
        await board.post(ctx, "d", "job")
        await board.verify(ctx, "a", verified=False, by="auditor", note="no")
        await board.verify(ctx, "c", verified=True, by="auditor")
        await board.take(ctx, "d")

    async def go() -> None:
        async with app:
            await app.run(fill, run_id="fill")

    asyncio.run(go())


def test_board_lists_entries_with_provenance_and_poisoning(cli: Cli, tmp_path: Path) -> None:
    """--plain: one row per live entry (taken ones with --taken), who wrote it, the
    verification, and b's chain to the refuted a; --json carries the same."""
    path = tmp_path / "j.db"
    make_board(path)
    shown = cli("board", "facts", "--plain", "--store", str(path))
    assert shown.exit_code == 0, shown.output
    header, *rows = shown.stdout.splitlines()
    assert header.split("\t") == ["key", "v", "state", "value", "by", "written", "taken",
                                  "poisoned"]
    cells = {r.split("\t")[0]: r.split("\t") for r in rows}
    assert sorted(cells) == ["a", "b", "c"]
    assert cells["a"][2] == "refuted by auditor" and cells["a"][4] == "scout sim:scout"
    assert cells["a"][5].startswith("fill/")
    assert cells["b"][7] == "b -> a" and cells["c"][2] == "verified by auditor"
    with_taken = cli("board", "facts", "--plain", "--taken", "--store", str(path))
    assert [r.split("\t")[0] for r in with_taken.stdout.splitlines()[1:]] == [
        "a", "b", "c", "d"]
    data = json.loads(cli("board", "facts", "--json", "--store", str(path)).stdout)
    by_key = {e["key"]: e for e in data["entries"]}
    assert by_key["b"]["poisoned_by"] == ["b", "a"] and by_key["a"]["poisoned_by"] is None
    assert by_key["a"]["provenance"]["agent"] == "scout"
    only = cli("board", "facts", "--plain", "--verified-only", "--store", str(path))
    assert [r.split("\t")[0] for r in only.stdout.splitlines()[1:]] == ["c"]


def test_board_errors_are_one_line(cli: Cli, tmp_path: Path) -> None:
    """A bad pattern: one line, exit 2. An unknown board says which boards exist."""
    path = tmp_path / "j.db"
    make_board(path)
    line = cli.one_line_error(cli("board", "facts", "-p", "a\\", "--store", str(path)), 2)
    assert "pattern 'a\\\\' is not valid" in line
    empty = cli("board", "nope", "--store", str(path))
    assert empty.exit_code == 0
    assert "no entries on blackboard 'nope' (boards in this store: facts)" in empty.output


def test_board_reads_a_postgres_journal(cli: Cli, pg_url: str) -> None:
    """The same view of a board kept in PostgreSQL."""
    make_board(pg_url)
    data = json.loads(cli("board", "facts", "--json", "--store", pg_url).stdout)
    assert [(e["key"], e["state"]) for e in data["entries"]] == [
        ("a", "refuted"), ("b", "unverified"), ("c", "verified")]
    assert data["entries"][1]["poisoned_by"] == ["b", "a"]

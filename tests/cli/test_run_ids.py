"""``stalwart run --run-id``: the same id with other input is refused with one line
naming both inputs' hashes (exit 2), unless ``--if-exists return``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from stalwart._serde import input_hash

if TYPE_CHECKING:
    from conftest import Cli, Project


def test_a_reused_run_id_with_other_input_exits_2(cli: Cli, project: Project) -> None:
    """Same input: the existing run (exit 0); other input: one error line, exit 2."""
    st = ["--store", project.store]
    first = cli("run", project.wf("adder"), "-i", '{"a": 1, "b": 2}', "--run-id", "k1", *st)
    assert first.exit_code == 0, first.output
    same = cli("run", project.wf("adder"), "-i", '{"b": 2, "a": 1}', "--run-id", "k1", *st)
    assert same.exit_code == 0, same.output
    assert "already existed" in same.stderr and json.loads(same.stdout) == 3
    other = cli("run", project.wf("adder"), "-i", '{"a": 5, "b": 5}', "--run-id", "k1", *st)
    line = cli.one_line_error(other, 2)
    assert "IdempotencyConflictError" in line or "other input" in line, line
    assert input_hash('{"a":1,"b":2}')[:12] in line
    assert input_hash('{"a":5,"b":5}')[:12] in line
    assert "--if-exists return" in line  # the way out, as the CLI spells it


def test_if_exists_return_hands_back_the_existing_run(cli: Cli, project: Project) -> None:
    """--if-exists return: the existing run's result, whatever the input."""
    st = ["--store", project.store]
    assert cli("run", project.wf("adder"), "-i", "[1, 2]", "--run-id", "k2",
               *st).exit_code == 0
    again = cli("run", project.wf("adder"), "-i", "[7, 7]", "--run-id", "k2",
                "--if-exists", "return", *st)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == 3
    bad = cli("run", project.wf("adder"), "-i", "[7, 7]", "--run-id", "k2",
              "--if-exists", "ignore", *st)
    assert "--if-exists" in cli.one_line_error(bad, 2)

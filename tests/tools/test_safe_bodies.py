"""The helpers for safe tool bodies refuse the classic escapes: a shell string, a
program outside the allowlist, a path out of its root (``..``, absolute, symlinks),
spliced or schema-changing SQL."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import pytest

from stalwart.errors import UnsafeArgumentError
from stalwart.tools import arun_argv, confine, open_confined, run_argv, sql_execute, sql_query

PY = sys.executable


# -- argv --------------------------------------------------------------------------------


def test_a_shell_string_is_refused() -> None:
    """A command given as one string (what a shell would split) never runs."""
    with pytest.raises(UnsafeArgumentError, match="argv list"):
        run_argv("echo hi; touch /tmp/pwned")  # type: ignore[arg-type]


def test_shell_metacharacters_are_data(tmp_path: Path) -> None:
    """``; touch FILE`` in an argument is printed, not executed."""
    marker = tmp_path / "pwned"
    result = run_argv([PY, "-c", "import sys; print(sys.argv[1])", f"x; touch {marker}"])
    assert result.returncode == 0
    assert result.stdout.strip() == f"x; touch {marker}"
    assert not marker.exists()


def test_only_allowed_programs_run() -> None:
    """With ``allow``, argv[0] (or its base name) must be listed."""
    with pytest.raises(UnsafeArgumentError, match="not allowed"):
        run_argv(["rm", "-rf", "/nonexistent"], allow={"ls", "git"})
    assert run_argv([PY, "-c", "print(1)"], allow={os.path.basename(PY)}).stdout == "1\n"


def test_after_options_cannot_become_options() -> None:
    """Model arguments go after ``--``: ``--evil`` reaches the program as a name."""
    code = "import sys; print(sys.argv[1:])"
    result = run_argv([PY, "-c", code], after_options=["--output=/etc/passwd"])
    assert result.stdout.strip() == "['--', '--output=/etc/passwd']"


def test_the_environment_is_minimal_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret in our environment does not reach the program unless passed."""
    monkeypatch.setenv("SECRET_API_KEY", "sk-123")
    code = "import os; print(os.environ.get('SECRET_API_KEY'))"
    assert run_argv([PY, "-c", code]).stdout.strip() == "None"
    assert run_argv([PY, "-c", code], env={"SECRET_API_KEY": "given"}).stdout.strip() == "given"


def test_nul_and_non_strings_are_refused() -> None:
    """A NUL byte or a non-string in argv is refused before anything runs."""
    with pytest.raises(UnsafeArgumentError, match="NUL"):
        run_argv(["echo", "a\0b"])
    with pytest.raises(UnsafeArgumentError, match="not a string"):
        run_argv(["echo", 3])  # type: ignore[list-item]
    with pytest.raises(UnsafeArgumentError, match="empty"):
        run_argv([])


async def test_the_async_form_refuses_and_times_out() -> None:
    """``arun_argv`` applies the same checks, and kills a program past its timeout."""
    with pytest.raises(UnsafeArgumentError):
        await arun_argv("ls -l")  # type: ignore[arg-type]
    result = await arun_argv([PY, "-c", "import sys; print(sys.argv[1])", "$(id)"])
    assert result.stdout.strip() == "$(id)"
    with pytest.raises(TimeoutError):
        await arun_argv([PY, "-c", "import time; time.sleep(30)"], timeout=0.2)


def test_output_is_capped() -> None:
    """Output past ``max_output`` is cut and flagged."""
    result = run_argv([PY, "-c", "print('x' * 5000)"], max_output=100)
    assert len(result.stdout) == 100 and result.truncated


# -- paths -------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "docs").mkdir(parents=True)
    (r / "docs" / "a.txt").write_text("inside")
    (tmp_path / "secret.txt").write_text("outside")
    return r


@pytest.mark.parametrize("escape", ["../secret.txt", "docs/../../secret.txt",
                                    "docs/../../root/../secret.txt"])
def test_dotdot_escapes_are_refused(root: Path, escape: str) -> None:
    """``..`` that climbs out of the root is refused, by both helpers."""
    with pytest.raises(UnsafeArgumentError, match=r"escapes|climbs"):
        confine(root, escape)
    with pytest.raises(UnsafeArgumentError, match="climbs"):
        open_confined(root, escape)


def test_absolute_paths_and_nul_are_refused(root: Path) -> None:
    """An absolute path or a NUL byte is refused."""
    for bad in ("/etc/passwd", str(root / "docs" / "a.txt"), "docs/a\0.txt", ""):
        with pytest.raises(UnsafeArgumentError):
            confine(root, bad)


def test_a_symlink_out_of_the_root_is_refused(root: Path) -> None:
    """A symlink inside the root that points out of it is an escape."""
    (root / "docs" / "link").symlink_to(root.parent / "secret.txt")
    (root / "out").symlink_to(root.parent)
    for escape in ("docs/link", "out/secret.txt"):
        with pytest.raises(UnsafeArgumentError, match="escapes"):
            confine(root, escape)
        with pytest.raises(UnsafeArgumentError, match="symlink"):
            open_confined(root, escape)


def test_paths_inside_are_allowed(root: Path) -> None:
    """A path inside (``..`` that stays inside, a symlink inside) resolves; a file not
    there yet may be named (to be created)."""
    assert confine(root, "docs/a.txt").read_text() == "inside"
    assert confine(root, "docs/../docs/./a.txt") == (root / "docs" / "a.txt").resolve()
    (root / "inner").symlink_to(root / "docs")
    assert confine(root, "inner/a.txt").read_text() == "inside"
    assert confine(root, "docs/new.txt").parent == (root / "docs").resolve()
    with os.fdopen(open_confined(root, "docs/a.txt")) as f:
        assert f.read() == "inside"
    fd = open_confined(root, "docs/new.txt", os.O_WRONLY | os.O_CREAT)
    with os.fdopen(fd, "w") as f:
        f.write("made")
    assert (root / "docs" / "new.txt").read_text() == "made"


def test_open_confined_follows_no_symlink(root: Path) -> None:
    """Even a symlink that stays inside is refused by ``open_confined`` (nothing can be
    swapped in between a check and the open)."""
    (root / "inner").symlink_to(root / "docs")
    with pytest.raises(UnsafeArgumentError, match="symlink"):
        open_confined(root, "inner/a.txt")


# -- SQL ---------------------------------------------------------------------------------


@pytest.fixture
def db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE users (name TEXT, email TEXT)")
    conn.execute("INSERT INTO users VALUES ('ada', 'ada@example.com')")
    conn.commit()
    return conn


def test_values_are_bound_not_spliced(db: sqlite3.Connection) -> None:
    """An injection in a value is data: it matches nothing and the table survives."""
    evil = "x' OR '1'='1'; DROP TABLE users; --"
    assert sql_query(db, "SELECT * FROM users WHERE name = ?", (evil,)) == []
    assert sql_query(db, "SELECT name FROM users WHERE name = :n", {"n": "ada"}) == [
        {"name": "ada"}]
    assert sql_execute(db, "INSERT INTO users VALUES (?, ?)", (evil, "e")) == 1
    assert sql_query(db, "SELECT count(*) AS n FROM users") == [{"n": 2}]


def test_a_read_only_query_cannot_write(db: sqlite3.Connection) -> None:
    """Even spliced SQL run as a query cannot delete, drop or attach."""
    for sql in ("DELETE FROM users", "DROP TABLE users",
                "ATTACH DATABASE ':memory:' AS x", "INSERT INTO users VALUES ('a', 'b')"):
        with pytest.raises(UnsafeArgumentError, match="may not"):
            sql_query(db, sql)  # type: ignore[arg-type]
    assert sql_query(db, "SELECT count(*) AS n FROM users") == [{"n": 1}]


def test_a_write_cannot_change_the_schema(db: sqlite3.Connection) -> None:
    """``sql_execute`` changes rows only: DROP, CREATE, PRAGMA are refused."""
    for sql in ("DROP TABLE users", "CREATE TABLE t (x)", "PRAGMA writable_schema = 1"):
        with pytest.raises(UnsafeArgumentError, match="may not"):
            sql_execute(db, sql)  # type: ignore[arg-type]
    assert sql_execute(db, "UPDATE users SET email = ? WHERE name = ?", ("n@x", "ada")) == 1


def test_a_second_statement_and_wrong_bindings_are_refused(db: sqlite3.Connection) -> None:
    """Two statements, or a count of values that does not fit, are refused."""
    with pytest.raises(UnsafeArgumentError, match="one parameterized"):
        sql_query(db, "SELECT 1; SELECT 2")
    with pytest.raises(UnsafeArgumentError, match="one parameterized"):
        sql_query(db, "SELECT * FROM users WHERE name = ?", ("a", "b"))
    with pytest.raises(UnsafeArgumentError, match="not a string"):
        sql_query(db, "SELECT * FROM users WHERE name = ?", "ada")  # type: ignore[arg-type]
    # the authorizer is removed afterwards: the connection is the caller's again
    db.execute("CREATE TABLE after (x)")

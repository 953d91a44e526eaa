"""A throwaway PostgreSQL cluster for a benchmark: ``initdb`` + ``pg_ctl`` on a free port.

The benchmarks count statements with ``pg_stat_statements``, which needs
``shared_preload_libraries`` — a server setting that takes a restart. The machine's own
server is shared (other people and test suites use it): it is never reconfigured or
restarted. Instead a benchmark starts a cluster of its own in a temporary folder, with
the extension preloaded, and removes it afterwards (the same recipe as
``tests/workers/test_pg_restart.py``: as the ``postgres`` user when run as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class NoCluster(RuntimeError):
    """A throwaway cluster cannot be made here (no binaries, or root without postgres)."""


def _binaries() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                   key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()])
    for folder in reversed(found):
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise NoCluster("no initdb/pg_ctl under /usr/lib/postgresql/*/bin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def throwaway_cluster(*settings: str) -> Iterator[str]:
    """Start a cluster with ``settings`` (``name=value`` server options) and yield its
    URL (user ``postgres``, database ``postgres``); stop and delete it afterwards."""
    binaries = _binaries()
    folder = Path(tempfile.mkdtemp(prefix="stalwart-bench-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            raise NoCluster("running as root with no 'postgres' user") from None
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()
    options = " ".join([f"-p {port}", f"-k {folder}", "-c listen_addresses=127.0.0.1",
                        *(f"-c {s}" for s in settings)])
    try:
        subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data), "-U",
                        "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-o", options,
                        "-l", str(folder / "server.log"), "-w", "-t", "60", "start"],
                       check=True, capture_output=True, timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        err = (getattr(exc, "stderr", b"") or b"").decode(errors="replace").strip()[:300]
        raise NoCluster(f"cannot start a throwaway cluster: {exc}: {err}") from exc
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast",
                        "-w", "stop"], check=False, capture_output=True, timeout=90)
        shutil.rmtree(folder, ignore_errors=True)

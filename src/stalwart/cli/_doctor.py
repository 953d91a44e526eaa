"""``stalwart doctor``: check a journal end to end and say what is wrong with it.

It reads only (SQLite ``mode=ro``, PostgreSQL sessions read-only) and checks, in order:

* **the WAL** (SQLite): every frame against SQLite's checksums, as SQLite's recovery
  reads them (``store._wal``) — before anything opens the file, since the first
  connection rebuilds the index that shows what was committed. When frames are lost,
  the rest is checked on a copy, as SQLite would read it now;
* **structure** (SQLite): ``PRAGMA integrity_check`` (``quick_check``, and every index
  against its table);
* **schema**: that it is a stalwart journal, of a version this stalwart reads;
* **chains**: every run's events against their digests, and every run row against its
  own (``store._chain``);
* **status**: that a finished run's journal ends with its ending, and an unfinished
  one's does not;
* **leases**: a running run must have an owner and an expiry; runs whose owner is gone
  (a dead pid on this host, or an expired lease) are listed as reclaimable.

Exit status: 0 when nothing is damaged (notes may remain), 1 when something is, 2 when
there is no journal to check.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.text import Text

from .._runtime import open_store
from ..engine._worker import pid_alive
from ..errors import NotAStalwartStoreError, SchemaVersionError, StoreError
from ..store import _sqlite_schema
from ..store._base import TERMINAL_STATUSES, EventKind, RunRecord, RunStatus, Store
from ..store._sqlite import SQLiteStore
from ..store._wal import check_wal
from ._common import FAILURE, JsonOption, StoreOption, lease_note, print_json, run_async
from ._output import console

__all__ = ["Diagnosis", "Finding", "diagnose", "doctor"]

_ENDINGS = {
    RunStatus.COMPLETED: EventKind.RUN_COMPLETED,
    RunStatus.FAILED: EventKind.RUN_FAILED,
    RunStatus.CANCELLED: EventKind.RUN_CANCELLED,
    RunStatus.DEAD_LETTERED: EventKind.RUN_DEAD_LETTERED,
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the doctor found: ``damage`` (exit 1) or a ``note``."""

    level: Literal["damage", "note"]
    area: str
    text: str


@dataclass(slots=True)
class Diagnosis:
    """What ``stalwart doctor`` found in one journal."""

    store: str
    findings: list[Finding] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    runs: int = 0
    events: int = 0

    @property
    def damaged(self) -> bool:
        return any(f.level == "damage" for f in self.findings)

    def damage(self, area: str, text: str) -> None:
        self.findings.append(Finding("damage", area, text))

    def note(self, area: str, text: str) -> None:
        self.findings.append(Finding("note", area, text))


async def diagnose(store: Store, *, now: float, host: str,
                   pid_alive: Callable[[int], bool] = pid_alive) -> Diagnosis:
    """Check ``store`` (not open; opened read-only here) and say what is wrong."""
    report = Diagnosis(store.url)
    target = store
    copy_dir: str | None = None
    if isinstance(store, SQLiteStore):
        copied = _check_sqlite_file(store.path, report)
        if copied is not None:
            copy_dir = str(Path(copied).parent)
            target = SQLiteStore(copied, access="read")
    try:
        try:
            await target.open()
        except (NotAStalwartStoreError, SchemaVersionError) as exc:
            if isinstance(exc, SchemaVersionError) and exc.found < exc.expected:
                report.note("schema", str(exc))
                return report
            raise
        except StoreError as exc:
            report.damage("schema", str(exc))
            return report
        try:
            report.checked.append("schema")
            await _check_runs(target, report, now=now, host=host, pid_alive=pid_alive)
        finally:
            await target.close()
    finally:
        if copy_dir is not None:
            shutil.rmtree(copy_dir, ignore_errors=True)
    return report


def _check_sqlite_file(path: str, report: Diagnosis) -> str | None:
    """The WAL and the structure of ``path``; a copy to check the rest on when the WAL
    lost frames (opening the file itself would rebuild the evidence away)."""
    if _sqlite_schema.file_state(path) != "sqlite":
        raise NotAStalwartStoreError(f"no stalwart journal at {path} (nothing to check)")
    wal = check_wal(path)
    report.checked.append("wal")
    for line in wal.damage:
        report.damage("wal", line)
    for line in wal.notes:
        report.note("wal", line)
    copied = None
    if wal.damaged:
        folder = tempfile.mkdtemp(prefix="stalwart-doctor-")
        copied = str(Path(folder) / Path(path).name)
        shutil.copyfile(path, copied)
        shutil.copyfile(path + "-wal", copied + "-wal")
        # The copy (never the journal) is made to read as SQLite would now: what its WAL
        # still holds is checkpointed into it.
        conn = sqlite3.connect(copied)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        report.note("wal", "the rest was checked on a copy, as SQLite reads the journal "
                           "now (without the lost frames); the files were not opened")
    problems = _sqlite_schema.integrity_check(copied or path, busy_timeout=10.0)
    report.checked.append("structure")
    for line in problems:
        report.damage("structure", line)
    return copied


async def _check_runs(store: Store, report: Diagnosis, *, now: float, host: str,
                      pid_alive: Callable[[int], bool]) -> None:
    run_ids: list[str] = await store.run_ids()  # type: ignore[attr-defined]
    report.checked += ["chains", "status", "leases"]
    for run_id in run_ids:
        try:
            rec = await store.get_run(run_id)
            events = await store.load_events(run_id)
        except StoreError as exc:
            report.damage("chains", str(exc))
            continue
        if rec is None:
            report.damage("chains", f"run {run_id}: {len(events)} event(s) but no run row")
            continue
        report.runs += 1
        report.events += len(events)
        _check_status(rec, [e.kind for e in events], report)
        _check_lease(rec, report, now=now, host=host, pid_alive=pid_alive)


def _check_status(rec: RunRecord, kinds: list[EventKind], report: Diagnosis) -> None:
    last = kinds[-1] if kinds else None
    ending = _ENDINGS.get(rec.status)
    if ending is not None and last != ending:
        report.damage("status", f"run {rec.run_id} is {rec.status} but its journal ends "
                                f"with {last or 'nothing'}, not {ending}")
    elif ending is None and last in _ENDINGS.values():
        report.damage("status", f"run {rec.run_id} is {rec.status} but its journal ended "
                                f"it ({last})")


def _check_lease(rec: RunRecord, report: Diagnosis, *, now: float, host: str,
                 pid_alive: Callable[[int], bool]) -> None:
    if rec.status != RunStatus.RUNNING:
        if rec.lease_owner is not None and rec.status in TERMINAL_STATUSES:
            report.note("leases", f"run {rec.run_id} is {rec.status} yet names a lease "
                                  f"owner ({rec.lease_owner})")
        return
    if rec.lease_owner is None or rec.lease_expires_at is None:
        report.damage("leases", f"run {rec.run_id} is running with no lease owner or "
                                "expiry: no worker would ever take it over")
        return
    note = lease_note(rec, now=now, host=host, pid_alive=pid_alive)
    if note is not None:
        report.note("leases", f"run {rec.run_id} (pid {rec.owner_pid} on "
                              f"{rec.owner_host}): {note}")


def _render(report: Diagnosis) -> None:
    out = console()
    out.print(Text(f"stalwart doctor: {report.store}", style="bold"))
    out.print(f"checked: {', '.join(report.checked) or 'nothing'}; {report.runs} run(s), "
              f"{report.events} event(s) verified")
    for f in report.findings:
        style = "red" if f.level == "damage" else "dim"
        out.print(Text(f"  {f.level}: [{f.area}] {f.text}", style=style), soft_wrap=True)
    damage = sum(1 for f in report.findings if f.level == "damage")
    out.print(Text(f"DAMAGED: {damage} problem(s)", style="bold red") if damage
              else Text("no damage found", style="green"))


def doctor(
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a journal: WAL checksums, structure, schema, every run's checksum chain,
    statuses and leases. Reads only; exit 1 if anything is damaged."""
    st = open_store(store, access="read")
    report = run_async(diagnose(st, now=time.time(), host=socket.gethostname()))
    if as_json:
        out: dict[str, Any] = asdict(report)
        out["damaged"] = report.damaged
        print_json(out)
    else:
        _render(report)
    if report.damaged:
        raise SystemExit(FAILURE)

"""Real crashes: a child process runs a workflow and is SIGKILLed; a new process resumes.

The child (``crash_child.py``) writes every step's idempotency key to a deduplicating
ledger and to a raw, one-line-per-execution ledger. After each kill the test reads the
journal and the raw ledger to find the steps that were *in flight* — their effect
happened, their outcome was not committed — and, after the restart, checks that

* the run completes with the result of a crash-free run;
* the deduplicating ledger holds every step's key exactly once;
* the raw ledger shows a second execution for exactly the in-flight steps, and for the
  deterministic kill points that set is known in advance: the killed step for
  ``after_effect``, nothing for ``before_effect`` and ``between``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from stalwart import Runtime

CHILD = Path(__file__).with_name("crash_child.py")
RUN_ID = "crash-run"


def _load_child() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stalwart_tests_crash_child", CHILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cc = _load_child()

pytestmark = pytest.mark.slow


# -- driving the child ---------------------------------------------------------------


@dataclass
class Site:
    """One test's store and ledger folder."""

    store: Path
    ledger: Path

    @classmethod
    def make(cls, root: Path) -> Site:
        return cls(root / "journal.db", root / "ledger")


def spawn(site: Site, workflow: str, *, crash_at: str | None = None,
          park_after: float | None = None, step_delay: float | None = None,
          lease_seconds: float | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRASH_")}
    if crash_at is not None:
        env["CRASH_AT"] = crash_at
    if park_after is not None:
        env["CRASH_PARK_AFTER"] = str(park_after)
    if lease_seconds is not None:
        env["CRASH_LEASE"] = str(lease_seconds)
    if step_delay is not None:
        env["CRASH_STEP_DELAY"] = str(step_delay)
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(site.store), str(site.ledger), workflow, RUN_ID],
        env=env, cwd=site.store.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 30.0) -> tuple[int, str, str]:
    """Wait for (and reap) the child: a zombie would still look alive to a new runtime."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run_child(site: Site, workflow: str, **kw: object) -> tuple[int, str, str]:
    return finish(spawn(site, workflow, **kw))  # type: ignore[arg-type]


def kill(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGKILL)
    return finish(proc)[0]


# -- reading what the child left behind ----------------------------------------------


def raw_executions(site: Site) -> list[tuple[str, int, float]]:
    """(key, label, time) for every line of the raw ledger."""
    path = site.ledger / "raw.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        key, label, _pid, at = line.split("\t")
        out.append((key, int(label), float(at)))
    return out


def raw_keys(site: Site) -> list[str]:
    return [key for key, _, _ in raw_executions(site)]


def dedup_keys(site: Site) -> list[str]:
    conn = sqlite3.connect(site.ledger / "dedup.db")
    try:
        return [r[0] for r in conn.execute("SELECT key FROM effects")]
    finally:
        conn.close()


def journal(site: Site, sql: str, *args: object) -> list[tuple[object, ...]]:
    if not site.store.exists():
        return []
    conn = sqlite3.connect(site.store, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:  # the child has not created the schema yet
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def committed_keys(site: Site) -> set[str]:
    """Keys of the effect steps whose outcome the journal holds."""
    rows = journal(site, "SELECT run_id, step_id FROM events "
                   "WHERE kind = 'step_completed' AND name = 'effect'")
    return {f"{run_id}:{step_id}" for run_id, step_id in rows}


def in_flight(site: Site) -> set[str]:
    """Steps whose effect happened but whose outcome the journal does not hold."""
    return set(raw_keys(site)) - committed_keys(site)


def check_after_restart(site: Site, keys: set[str], reexecuted: Counter[str]) -> None:
    """Each key once in the dedup ledger; in the raw ledger once plus its re-executions."""
    dedup = dedup_keys(site)
    assert sorted(dedup) == sorted(keys)
    raw = Counter(raw_keys(site))
    assert set(raw) == keys
    wrong = {k: n for k, n in raw.items() if n != 1 + reexecuted[k]}
    assert not wrong, f"executions per key differ from 1 + re-executions: {wrong}"
    assert committed_keys(site) == keys
    statuses = journal(site, "SELECT status FROM runs")
    assert statuses and all(s == ("completed",) for s in statuses)


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the child")
        time.sleep(0.005)


# -- the crash-free reference --------------------------------------------------------


@dataclass
class Reference:
    result: int
    key_of: dict[int, str]

    @property
    def keys(self) -> set[str]:
        return set(self.key_of.values())


def _reference(root: Path, workflow: str) -> Reference:
    site = Site.make(root)
    code, out, err = run_child(site, workflow)
    assert code == 0, err
    result = json.loads(out)
    assert result == cc.expected(workflow)
    executions = raw_executions(site)
    key_of = {label: key for key, label, _ in executions}
    assert len(key_of) == len(executions)  # every step ran once
    assert sorted(dedup_keys(site)) == sorted(key_of.values())
    return Reference(result, key_of)


@pytest.fixture(scope="module")
def pipeline_ref(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return _reference(tmp_path_factory.mktemp("pipeline-ref"), "pipeline")


@pytest.fixture(scope="module")
def child_ref(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return _reference(tmp_path_factory.mktemp("child-ref"), "with_child")


def test_reference_run_has_every_step_once(pipeline_ref: Reference) -> None:
    """A crash-free child run executes all 26 steps once and returns the expected value."""
    assert len(pipeline_ref.key_of) == len(cc.PIPELINE_LABELS) >= 20
    assert pipeline_ref.result == cc.expected("pipeline")


# -- deterministic kill points in a 26-step workflow with two fan-outs ---------------

SEQUENTIAL = (*cc.SEQ_A, *cc.SEQ_B, *cc.SEQ_C)
GATHERS = [
    {x for b in cc.GATHER_A for x in b},
    {x for b in cc.GATHER_B for x in b},
]

KILL_POINTS = [
    (1, "before_effect"), (1, "after_effect"), (1, "between"),
    (4, "after_effect"), (5, "before_effect"), (6, "between"),
    (10, "after_effect"), (11, "between"), (12, "before_effect"), (13, "after_effect"),
    (22, "after_effect"), (23, "between"), (24, "before_effect"),
    (30, "after_effect"), (33, "before_effect"), (35, "between"),
    (43, "after_effect"), (43, "between"),
]


def _check_kill_state(site: Site, ref: Reference, label: int, phase: str) -> set[str]:
    """What the kill left: the journal and ledgers as the kill point implies."""
    key = ref.key_of[label]
    ran = set(raw_keys(site))
    committed = committed_keys(site)
    flying = ran - committed
    if phase == "before_effect":
        assert key not in ran
    elif phase == "after_effect":
        assert key in flying
    else:
        assert key in committed
    order = list(cc.PIPELINE_LABELS)
    if label in SEQUENTIAL:
        assert flying == ({key} if phase == "after_effect" else set())
        earlier = {ref.key_of[x] for x in order[:order.index(label)]}
        assert committed - {key} == earlier
    else:
        group = next(g for g in GATHERS if label in g)
        assert flying <= {ref.key_of[x] for x in group}
        first = min(order.index(x) for x in group)
        assert {ref.key_of[x] for x in order[:first]} <= committed
        assert ran <= {ref.key_of[x] for x in order[:first]} | {ref.key_of[x] for x in group}
    return flying


@pytest.mark.parametrize(("label", "phase"), KILL_POINTS,
                         ids=[f"{label}-{phase}" for label, phase in KILL_POINTS])
def test_kill_at_step_phase_then_restart(tmp_path: Path, pipeline_ref: Reference,
                                         label: int, phase: str) -> None:
    """SIGKILL at a chosen step and phase; a new process finishes with no extra effects."""
    site = Site.make(tmp_path)
    code, _, err = run_child(site, "pipeline", crash_at=f"{label}:{phase}")
    assert code == -signal.SIGKILL, err
    flying = _check_kill_state(site, pipeline_ref, label, phase)

    code, out, err = run_child(site, "pipeline")
    assert code == 0, err
    assert json.loads(out) == pipeline_ref.result
    check_after_restart(site, pipeline_ref.keys, Counter(flying))


def test_repeated_kills_then_restart(tmp_path: Path, pipeline_ref: Reference) -> None:
    """Killed again while recovering, three times over; only in-flight steps ever rerun."""
    site = Site.make(tmp_path)
    reexecuted: Counter[str] = Counter()
    for label, phase in [(4, "after_effect"), (12, "between"), (31, "after_effect"),
                         (41, "before_effect")]:
        code, _, err = run_child(site, "pipeline", crash_at=f"{label}:{phase}")
        assert code == -signal.SIGKILL, err
        if phase == "after_effect":
            assert pipeline_ref.key_of[label] in in_flight(site)
        reexecuted.update(in_flight(site))
    assert reexecuted[pipeline_ref.key_of[4]] == 1
    code, out, err = run_child(site, "pipeline")
    assert code == 0, err
    assert json.loads(out) == pipeline_ref.result
    check_after_restart(site, pipeline_ref.keys, reexecuted)


# -- kills at random moments, resumed by the test process itself ---------------------


@pytest.mark.parametrize("seed", range(6))
async def test_random_kill_then_resume_in_process(tmp_path: Path, pipeline_ref: Reference,
                                                  seed: int) -> None:
    """SIGKILL at a random moment; Runtime.resume in another process finishes the run."""
    rng = random.Random(seed)
    site = Site.make(tmp_path)
    proc = spawn(site, "pipeline", step_delay=0.01)  # ~10 ms a step, 26 steps
    # A random moment while at least six steps are left: after a random number of
    # effects, plus up to one step's time. The kill must land: an exit 0 would mean the
    # run finished first and nothing was tested.
    effects = rng.randint(1, len(cc.PIPELINE_LABELS) - 6)
    wait_for(lambda: len(raw_keys(site)) >= effects or proc.poll() is not None)
    await asyncio.sleep(rng.uniform(0.0, 0.01))
    code = kill(proc)
    assert code == -signal.SIGKILL
    assert journal(site, "SELECT status FROM runs") == [("running",)]
    flying = in_flight(site)

    cc.configure(site.ledger)
    app = cc.make_runtime(str(site.store))
    try:
        await app.resume()
        result = await app.handle(RUN_ID).result(timeout=30)
    finally:
        await app.close()
        cc.close()
    assert result == pipeline_ref.result
    check_after_restart(site, pipeline_ref.keys, Counter(flying))


# -- child runs ----------------------------------------------------------------------

CHILD_KILL_POINTS = [(2, "between"), (50, "after_effect"), (52, "before_effect"),
                     (54, "between"), (54, "after_effect"), (3, "after_effect")]


@pytest.mark.parametrize(("label", "phase"), CHILD_KILL_POINTS,
                         ids=[f"{label}-{phase}" for label, phase in CHILD_KILL_POINTS])
def test_kill_during_child_run_then_restart(tmp_path: Path, child_ref: Reference,
                                            label: int, phase: str) -> None:
    """Killed while a child run executes; both runs resume and the child runs only once."""
    site = Site.make(tmp_path)
    code, _, err = run_child(site, "with_child", crash_at=f"{label}:{phase}")
    assert code == -signal.SIGKILL, err
    flying = in_flight(site)
    assert flying == ({child_ref.key_of[label]} if phase == "after_effect" else set())

    code, out, err = run_child(site, "with_child")
    assert code == 0, err
    assert json.loads(out) == child_ref.result
    check_after_restart(site, child_ref.keys, Counter(flying))
    runs = journal(site, "SELECT run_id, parent_run_id FROM runs ORDER BY run_id")
    assert [r[1] for r in runs] == [None, RUN_ID]


# -- durable sleep -------------------------------------------------------------------


def _wake_at(site: Site) -> float | None:
    rows = journal(site, "SELECT payload FROM events WHERE kind = 'timer_started'")
    return float(json.loads(str(rows[0][0]))["wake_at"]) if rows else None


@pytest.mark.parametrize("mode", ["parked", "parked-restart-after-wake", "in-memory"])
def test_kill_during_durable_sleep_then_restart(tmp_path: Path, mode: str) -> None:
    """Killed while sleeping; after restart the run wakes on time, never early, once."""
    site = Site.make(tmp_path)
    parked = mode.startswith("parked")
    proc = spawn(site, "sleeper", park_after=0.1 if parked else 5.0)
    if parked:
        wait_for(lambda: journal(site, "SELECT status FROM runs") == [("sleeping",)])
    else:
        wait_for(lambda: _wake_at(site) is not None)
    assert kill(proc) == -signal.SIGKILL
    wake_at = _wake_at(site)
    assert wake_at is not None
    assert time.time() < wake_at  # the kill landed during the sleep
    assert in_flight(site) == set()
    if mode == "parked-restart-after-wake":
        time.sleep(max(0.0, wake_at - time.time()) + 0.3)

    restarted = time.time()
    code, out, err = run_child(site, "sleeper")
    assert code == 0, err
    assert json.loads(out) == cc.expected("sleeper")
    by_label = {label: at for _, label, at in raw_executions(site)}
    woke = by_label[cc.SLEEP_LABELS[1]]
    assert woke >= wake_at
    # On time: a fresh interpreter starts, replays and wakes it within seconds (a run
    # left for the dead process's 30 s lease to expire would not be).
    assert woke - max(wake_at, restarted) < 8.0
    keys = set(raw_keys(site))
    assert len(keys) == 2
    check_after_restart(site, keys, Counter())


# -- paused and unreaped owners --------------------------------------------------------


async def _held_by(app: Runtime) -> bool:
    """Whether ``app`` holds the run's lease. Its scheduler or ``resume()`` claims it,
    whichever comes first; by the time ``resume()`` returns, either claim has landed."""
    return (await app.get_run(RUN_ID)).lease_owner == app.owner.id


def _proc_state(pid: int) -> str:
    """The state letter /proc gives the process (R, S, T for stopped, Z for a zombie)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()[0].decode()


def _journal_idle(site: Site) -> bool:
    """No process holds the journal's write lock (a stopped one could be mid-commit)."""
    conn = sqlite3.connect(site.store, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            return False
        raise
    finally:
        conn.close()


def _stop_between_commits(proc: subprocess.Popen[str], site: Site) -> None:
    """SIGSTOP ``proc`` at a moment it holds no write lock on the journal (a process
    stopped mid-commit would block every other writer until it is continued)."""
    for _ in range(50):
        proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: _proc_state(proc.pid) == "T")
        if _journal_idle(site):
            return
        proc.send_signal(signal.SIGCONT)
    raise AssertionError("the child always held the journal's write lock")


async def test_a_paused_owner_runs_no_step_after_it_was_taken_over(tmp_path: Path) -> None:
    """The issue's repro with real processes. A runs step 60, then sleeps 3 s in memory
    (lease: 2 s). It is SIGSTOPped during the sleep; this process takes the run over
    once A's lease expired and finishes it (step 61). A is continued: its sleep ends,
    and its next step is refused by the lease fence. Effect 61 ran once, here."""
    site = Site.make(tmp_path)
    proc = spawn(site, "sleeper", lease_seconds=2.0)
    try:
        wait_for(lambda: _wake_at(site) is not None)
        _stop_between_commits(proc, site)
        wake_at = _wake_at(site)
        assert wake_at is not None and time.time() < wake_at  # stopped during the sleep
        (expires_at,), = journal(site, "SELECT lease_expires_at FROM runs")
        assert isinstance(expires_at, float)
        await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.05)  # A's lease lapses

        cc.configure(site.ledger)
        app = cc.make_runtime(str(site.store), lease_seconds=2.0)
        try:
            await app.resume(RUN_ID)
            assert await _held_by(app)  # taken over while A still exists
            result = await app.handle(RUN_ID).result(timeout=30)
        finally:
            await app.close()
            cc.close()
        assert result == cc.expected("sleeper")
    finally:
        proc.send_signal(signal.SIGCONT)
        code, out, err = finish(proc)
    by_label: dict[int, list[int]] = {}
    for line in (site.ledger / "raw.log").read_text().splitlines():
        _key, label, pid, _at = line.split("\t")
        by_label.setdefault(int(label), []).append(int(pid))
    assert by_label == {cc.SLEEP_LABELS[0]: [proc.pid], cc.SLEEP_LABELS[1]: [os.getpid()]}
    assert code == 0, err
    assert json.loads(out) == result  # A's handle reports the run's result...
    assert "lease lost, execution abandoned" in err  # ...after the fence stopped A


def test_a_zombie_pid_is_not_alive(tmp_path: Path) -> None:
    """A child SIGKILLed and not reaped keeps its pid (signal 0 still reaches it); the
    runtime's same-host liveness check counts it dead, a running process alive."""
    from stalwart.engine._worker import pid_alive as _pid_alive

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _pid_alive(proc.pid)
        proc.send_signal(signal.SIGKILL)
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # dead, left unreaped
        os.kill(proc.pid, 0)  # the pid still answers
        assert _proc_state(proc.pid) == "Z"
        assert not _pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert _pid_alive(os.getpid())


async def test_an_unreaped_dead_owner_is_taken_over_at_once(tmp_path: Path,
                                                           pipeline_ref: Reference) -> None:
    """The owner SIGKILLs itself mid-run and its parent (this test) has not reaped it: a
    new runtime on the same host takes the run over at its first claim, not after the
    30 s lease."""
    site = Site.make(tmp_path)
    proc = spawn(site, "pipeline", crash_at="22:after_effect")
    try:
        await asyncio.to_thread(os.waitid, os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        assert _proc_state(proc.pid) == "Z"
        flying = in_flight(site)
        cc.configure(site.ledger)
        app = cc.make_runtime(str(site.store))
        try:
            await app.resume()
            assert await _held_by(app)  # at its first claim, not after the lease
            result = await app.handle(RUN_ID).result(timeout=30)
        finally:
            await app.close()
            cc.close()
    finally:
        code = kill(proc)
    assert code == -signal.SIGKILL
    assert result == pipeline_ref.result
    check_after_restart(site, pipeline_ref.keys, Counter(flying))


# -- a crash in the middle of a backoff ------------------------------------------------


async def test_a_crash_during_a_retry_after_backoff_resumes_at_once_and_waits_it_out(
        tmp_path: Path) -> None:
    """The tool's first attempt gets a 429 with Retry-After 2 s; the child journals it
    and waits in memory. SIGKILLed during that wait, the run is taken over at once by
    this process (same host, dead pid), which waits out the rest of the journaled
    Retry-After before attempt 2: the count goes on and no call comes early."""
    site = Site.make(tmp_path)
    proc = spawn(site, "quota")
    try:
        wait_for(lambda: bool(journal(site, "SELECT 1 FROM events "
                                      "WHERE kind = 'attempt_failed'")))
    finally:
        code = kill(proc)
    assert code == -signal.SIGKILL
    (payload,), = journal(site, "SELECT payload FROM events WHERE kind = 'attempt_failed'")
    failed = json.loads(str(payload))
    assert failed["next"] == "retry" and failed["attempt"] == 1
    retry_at = float(failed["retry_at"])
    assert retry_at >= failed["at"] + cc.RETRY_AFTER

    cc.configure(site.ledger)
    app = cc.make_runtime(str(site.store))
    try:
        await app.resume()
        assert await _held_by(app)
        resumed_at = time.time()
        result = await app.handle(RUN_ID).result(timeout=30)
    finally:
        await app.close()
        cc.close()
    assert resumed_at < retry_at  # the takeover came during the backoff...
    assert result == "ok"
    attempts = [(label, at) for _, label, at in raw_executions(site)]
    assert [label for label, _ in attempts] == [1, 2]  # ...the count went on...
    assert attempts[1][1] >= retry_at  # ...and attempt 2 waited for Retry-After

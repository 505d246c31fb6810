"""Faults of the sqlite store, met for real through the ``storyloom`` command.

A garbage or truncated ``storyloom.db``, a database another process keeps
locked, a full state disk (a ``RLIMIT_FSIZE`` file size limit, and a small
tmpfs where this sandbox may mount one), a read-only state folder (a tmpfs
remounted read-only, where permitted; a state path under a file everywhere).
Each must end in one line ``storyloom: error: PATH: WHAT; WHAT TO DO``, exit
5, no traceback, nothing half-written, and a state that ``resume`` completes
once the fault is gone.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from storyloom import api
from storyloom.plugins.stores.sqlite import DB_NAME, SQLiteStore
from storyloom.store import StoreUnavailable
from storyloom.testing import Loom
from test_cli import completed_attempts, project, read_store, wait_for_completed
from test_cli import cli as _cli

EXIT_STORE = 5
FAST_LOCK = {"STORYLOOM_SQLITE_BUSY_TIMEOUT": "0.3"}


def environment(env: dict | None) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    environ.update(STORYLOOM_DISABLE_PLUGIN_AUTOLOAD="1", **(env or {}))
    return environ


def cli(*args: str, cwd: Path, env: dict | None = None, limit: int | None = None) -> subprocess.CompletedProcess:
    """The command; with ``limit``, under a file size limit (RLIMIT_FSIZE, SIGXFSZ ignored:
    a write past it fails with EFBIG, as on a full disk)."""
    if limit is None:
        return _cli(*args, cwd=cwd, env=env)
    environ = environment(env)

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "storyloom.cli", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=120, preexec_fn=limited)


def assert_store_fault(out: subprocess.CompletedProcess, path: Path | str, *words: str) -> None:
    """Exit 5 and one line on stderr naming ``path``, with ``words`` in it."""
    assert out.returncode == EXIT_STORE, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"storyloom: error: {path}: "), lines[0]
    assert "; " in lines[0].removeprefix(f"storyloom: error: {path}: ")  # what happened; what to do
    for word in words:
        assert word in lines[0], lines[0]


def states(folder: Path, job_id: str, **overrides) -> tuple[str | None, dict[str, int]]:
    """The job's stored state and item counts (None, {} if it is not stored)."""
    async def read(store):
        row = await store.get_job(job_id)
        return (row.state if row else None), (await store.counts(job_id) if row else {})

    return Loom(folder).read(read, **overrides)


def shown(folder: Path, job_id: str, *state: str, run=cli) -> tuple[str, str | None]:
    """The state and reason ``storyloom status JOB --json`` shows (``run``: ``cli`` or
    ``main_in``); it must write nothing."""
    db = Path(state[1]) if state else folder / ".storyloom"
    before = {p.name: p.read_bytes() for p in db.glob(f"{DB_NAME}*")}
    out = run("status", job_id, "--json", *state, cwd=folder)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert {p.name: p.read_bytes() for p in db.glob(f"{DB_NAME}*")} == before
    data = json.loads(out.stdout)
    return data["state"], data["reason"]


def assert_shown_interrupted(folder: Path, job_id: str, *state: str, run=cli) -> None:
    """A job its worker left (stored as interrupted, or left running by a
    process that is gone) is shown as interrupted, with how to continue: at
    once if stored so, else once its heartbeat and leases are older than its
    lease (2s in these tests)."""
    wait_until_interrupted(folder, job_id, *state)
    shown_state, reason = shown(folder, job_id, *state, run=run)
    assert shown_state == "interrupted", (shown_state, reason)
    assert reason.startswith("the store failed: ") or (
        "is gone; storyloom resume" in reason and reason.endswith(f"resume {job_id} continues")), reason


def wait_until_interrupted(folder: Path, job_id: str, *state: str) -> None:
    """Poll the status in-process (a CLI per poll costs ~0.5 s) until the job
    shows as interrupted, at most 30 s; the caller then asks the CLI once."""
    options = Loom(folder).options(**({"state_dir": state[1]} if state else {}))
    deadline = time.monotonic() + 30
    while trio.run(lambda: api.job_status(job_id, options=options))["state"] != "interrupted":
        if time.monotonic() > deadline:
            return  # the CLI's answer, asserted by the caller, says what it is
        time.sleep(0.1)


def _stored_jobs(folder: Path, state_dir: Path) -> list[str]:
    async def read(store):
        return [job.job_id for job in await store.list_jobs()]

    return Loom(folder).read(read, state_dir=str(state_dir))


# -- a damaged database file


@pytest.mark.parametrize("command", [("status",), ("status", "cli-job"), ("run", "jobs/cli-job.yaml"),
                                     ("submit", "jobs/cli-job.yaml"), ("resume", "cli-job"), ("queue",),
                                     ("report", "cli-job")])
def test_a_garbage_database_is_exit_5_and_left_as_it_was(tmp_path, command, main_in):
    project(tmp_path)
    db = tmp_path / ".storyloom" / DB_NAME
    db.parent.mkdir()
    db.write_bytes(b"not a database, just some bytes\n" * 200)
    before = db.read_bytes()
    out = main_in(*command, cwd=tmp_path)  # a process's exit 5: the truncated and locked tests
    assert_store_fault(out, Path(".storyloom") / DB_NAME, "not a storyloom database", "backup")
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == [DB_NAME]


@pytest.mark.slow
def test_a_truncated_database_is_exit_5(tmp_path, main_in):
    project(tmp_path, n=40)
    assert main_in("run", "jobs/cli-job.yaml", cwd=tmp_path).returncode == 0
    db = tmp_path / ".storyloom" / DB_NAME
    os.truncate(db, db.stat().st_size // 2)
    for command in (("status", "cli-job"), ("report", "cli-job")):
        assert_store_fault(main_in(*command, cwd=tmp_path), Path(".storyloom") / DB_NAME, "damaged")


def test_the_backend_raises_store_unavailable_with_path_reason_and_hint(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"\x00garbage" * 512)
    with pytest.raises(StoreUnavailable) as caught:
        SQLiteStore.open(tmp_path)
    assert caught.value.path == str(tmp_path / DB_NAME)
    assert "not a storyloom database" in caught.value.reason and "backup" in caught.value.hint


# -- a locked database


def hold_write_lock(db: Path) -> sqlite3.Connection:
    """Another process's view: a connection holding the write lock until closed."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


@pytest.mark.slow
def test_a_locked_database_is_exit_5_and_nothing_is_stored(tmp_path, main_in):
    project(tmp_path, job_id="first")
    assert main_in("run", "jobs/first.yaml", cwd=tmp_path).returncode == 0  # set-up: in-process
    project(tmp_path, job_id="second")
    lock = hold_write_lock(tmp_path / ".storyloom" / DB_NAME)
    try:
        for command in (("run", "jobs/second.yaml"), ("submit", "jobs/second.yaml")):
            out = cli(*command, cwd=tmp_path, env=FAST_LOCK)
            assert_store_fault(out, Path(".storyloom") / DB_NAME, "locked by another process", "0.3s")
        # Readers are never blocked: status still answers.
        assert main_in("status", cwd=tmp_path, env=FAST_LOCK).returncode == 0
    finally:
        lock.close()
    assert _stored_jobs(tmp_path, tmp_path / ".storyloom") == ["first"]
    assert main_in("run", "jobs/second.yaml", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("value", ["soon", "inf", "1e300", "86401"])
def test_a_bad_busy_timeout_is_a_usage_error(tmp_path, value, main_in):
    project(tmp_path)
    out = main_in("run", "jobs/cli-job.yaml", "-q", cwd=tmp_path, env={"STORYLOOM_SQLITE_BUSY_TIMEOUT": value})
    assert out.returncode == 2 and "STORYLOOM_SQLITE_BUSY_TIMEOUT" in out.stderr and "Traceback" not in out.stderr
    assert "<= 86400" in out.stderr, out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("then", ["resume", "work"])
def test_a_lock_taken_mid_run_leaves_a_job_that_resume_or_work_completes(tmp_path, then, main_in):
    """Every write fails, the last state write too: the job is left running,
    its items held by a process that is gone, and the next command takes it up."""
    project(tmp_path, n=60, latency=40, parallel=2)
    proc = subprocess.Popen([sys.executable, "-m", "storyloom.cli", "run", "jobs/cli-job.yaml", "-q"],
                            cwd=tmp_path, env=environment(FAST_LOCK), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_completed(tmp_path, "cli-job", at_least=4)
        lock = hold_write_lock(tmp_path / ".storyloom" / DB_NAME)
        try:
            _, stderr = proc.communicate(timeout=60)
        finally:
            lock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_STORE, stderr
    assert "Traceback" not in stderr and f"storyloom: error: {Path('.storyloom') / DB_NAME}: " in stderr
    state, counts = states(tmp_path, "cli-job")
    assert state == "running" and counts["completed"] < 60  # the final state write failed too
    # but status tells the truth, once the worker's heartbeat and leases are older than its lease (2s)
    # what follows the fault needs no process of its own: in-process
    wait_until_interrupted(tmp_path, "cli-job")
    shown_state, reason = shown(tmp_path, "cli-job", run=main_in)
    assert shown_state == "interrupted" and f":{proc.pid}) is gone; storyloom resume cli-job continues" in reason
    args = ("resume", "cli-job") if then == "resume" else ("work", "--burst")
    out = main_in(*args, "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    state, counts = states(tmp_path, "cli-job")
    assert state == "completed" and counts["completed"] == 60
    assert set(read_store(tmp_path, completed_attempts).values()) == {1}  # none completed twice


# -- a full state disk


@pytest.mark.slow
def test_a_full_state_disk_is_exit_5_and_resume_completes_the_job(tmp_path, main_in):
    project(tmp_path, n=400, parallel=4)
    assert main_in("submit", "jobs/cli-job.yaml", cwd=tmp_path).returncode == 0  # set-up: in-process
    out = cli("resume", "cli-job", "-q", cwd=tmp_path, limit=400_000)  # the WAL cannot grow past it
    assert_store_fault(out, Path(".storyloom") / DB_NAME, "free space")
    state, counts = states(tmp_path, "cli-job")
    # Stored as interrupted when the last write still fits in the WAL; else left
    # running, held by a process that is gone (the lock test pins that case).
    assert state in ("interrupted", "running") and 0 < counts["completed"] < 400
    assert_shown_interrupted(tmp_path, "cli-job", run=main_in)
    out = main_in("resume", "cli-job", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    state, counts = states(tmp_path, "cli-job")
    assert state == "completed" and counts["completed"] == 400
    assert set(read_store(tmp_path, completed_attempts).values()) == {1}


def test_a_job_too_big_for_the_state_disk_is_not_stored_at_all(tmp_path):
    project(tmp_path, n=2000)
    assert cli("submit", "jobs/cli-job.yaml", cwd=tmp_path, limit=200_000).returncode == EXIT_STORE
    assert _stored_jobs(tmp_path, tmp_path / ".storyloom") == []


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs of our own, if this sandbox lets us mount one."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                                   capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def remount(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True, capture_output=True)


@pytest.mark.slow
def test_a_full_tmpfs_state_folder_is_exit_5_and_resume_completes_once_there_is_room(tmp_path, tmpfs, main_in):
    project(tmp_path, n=300)
    state = ("--state-dir", str(tmpfs / "state"))
    assert main_in("submit", "jobs/cli-job.yaml", *state, cwd=tmp_path).returncode == 0  # set-up: in-process
    out = cli("resume", "cli-job", "-q", *state, cwd=tmp_path)
    assert_store_fault(out, tmpfs / "state" / DB_NAME, "disk is full", "free space")
    job_state, counts = states(tmp_path, "cli-job", state_dir=state[1])
    assert job_state in ("interrupted", "running") and counts["completed"] < 300
    assert_shown_interrupted(tmp_path, "cli-job", *state, run=main_in)
    remount(tmpfs, "size=64m")
    out = main_in("resume", "cli-job", "-q", *state, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert states(tmp_path, "cli-job", state_dir=state[1]) == (
        "completed", {"pending": 0, "running": 0, "completed": 300, "failed": 0, "skipped": 0})
    assert set(Loom(tmp_path).read(completed_attempts, state_dir=state[1]).values()) == {1}


# -- a read-only state folder


@pytest.mark.slow
def test_a_read_only_tmpfs_state_folder_is_exit_5(tmp_path, tmpfs, main_in):
    project(tmp_path, job_id="first")
    state = tmpfs / "state"
    assert main_in("run", "jobs/first.yaml", "-q", "--state-dir", str(state), cwd=tmp_path).returncode == 0
    project(tmp_path, job_id="second")
    remount(tmpfs, "ro")
    out = cli("run", "jobs/second.yaml", "-q", "--state-dir", str(state), cwd=tmp_path)
    assert_store_fault(out, state / DB_NAME, "read-only", "--state-dir")
    out = main_in("run", "jobs/second.yaml", "-q", "--state-dir", str(tmpfs / "new"), cwd=tmp_path)
    assert_store_fault(out, tmpfs / "new", "cannot create the state folder", "read-only")
    remount(tmpfs, "rw")
    assert _stored_jobs(tmp_path, state) == ["first"]


def test_a_state_folder_that_cannot_be_created_is_exit_5(tmp_path):
    """Root ignores file modes, so this is the read-only case any user meets: a file in the way."""
    project(tmp_path)
    (tmp_path / "blocker").write_text("a file, not a folder")
    out = cli("run", "jobs/cli-job.yaml", "--state-dir", "blocker/state", cwd=tmp_path)
    assert_store_fault(out, Path("blocker/state"), "cannot create the state folder", "a file, not a folder")

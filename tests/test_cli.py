"""The storyloom command in a subprocess: exit codes, messages, signals, crashes.

The test reads what the command stored through the store seam and the Store
protocol (``Loom.read``), never the backend's files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storyloom.atomic import remove_temporary
from storyloom.store import StoreNotFound
from storyloom.testing import Loom

ROOT = Path(__file__).resolve().parent.parent

SETTINGS = """
models:
  sim:
    provider: simulated
    latency_ms: {latency}
    output_tokens: 50
    seed: 3
    price: {{input: 1.0, output: 2.0}}
default_models: [sim]
retry_config: {{max_retries: 2, retry_delay: {{initial: 0.05s, max: 0.1s}}}}
queue: {{lease: 2s}}  # a killed worker's items are back within 2s + 2s/3, not 30s
"""

JOB = """
job_id: {job_id}
job_type: chapter_writing
language: th
config: {{max_parallel: {parallel}}}
items:
  - {{project_id: rain, chapters: 1-{n}, genre: fantasy}}
"""


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    environ["STORYLOOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "storyloom.cli", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=timeout)


def popen(*args: str, cwd: Path) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    environ["STORYLOOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.Popen([sys.executable, "-m", "storyloom.cli", *args], cwd=cwd, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def project(tmp_path: Path, *, n: int = 6, latency: int = 0, parallel: int = 3, job_id: str = "cli-job",
            store: str | None = None) -> Path:
    """A folder with settings and a job; ``store``: a store URL for ``store:``
    in the settings (None: the default, SQLite in the state folder)."""
    settings = SETTINGS.format(latency=latency) + (f"store: '{store}'\n" if store else "")
    (tmp_path / "storyloom.yaml").write_text(settings)
    (tmp_path / "jobs").mkdir(exist_ok=True)
    job = tmp_path / "jobs" / f"{job_id}.yaml"
    job.write_text(JOB.format(job_id=job_id, n=n, parallel=parallel))
    return job


def read_store(folder: Path, action):
    """``await action(store)`` on the store the command in ``folder`` uses."""
    return Loom(folder).read(action)


def wait_for_completed(folder: Path, job_id: str, at_least: int, timeout: float = 30) -> int:
    async def completed(store) -> int:
        return (await store.counts(job_id))["completed"] if await store.get_job(job_id) else 0

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done = read_store(folder, completed)
            if done >= at_least:
                return done
        except StoreNotFound:
            pass  # not created yet
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} items completed within {timeout}s")


def wait_for_job_state(folder: Path, job_ids: tuple[str, ...], state: str, timeout: float = 30) -> None:
    async def states(store) -> set[str]:
        return {(await store.get_job(job_id)).state for job_id in job_ids}

    deadline = time.monotonic() + timeout
    while read_store(folder, states) != {state}:
        assert time.monotonic() < deadline, f"{job_ids} not all {state} within {timeout}s"
        time.sleep(0.05)


async def all_counts(store) -> dict[str, int]:
    """Items per state over every job, non-zero states only."""
    total: dict[str, int] = {}
    for job in await store.list_jobs():
        for state, n in (await store.counts(job.job_id)).items():
            total[state] = total.get(state, 0) + n
    return {state: n for state, n in total.items() if n}


async def completed_attempts(store) -> dict[tuple[str, str], int]:
    """(job_id, item_id) -> how many attempts completed it."""
    per_item: dict[tuple[str, str], int] = {}
    for job in await store.list_jobs():
        for row in await store.attempts(job.job_id):
            if row.state == "completed":
                per_item[(job.job_id, row.item_id)] = per_item.get((job.job_id, row.item_id), 0) + 1
    return per_item


async def results(store, job_id: str) -> int:
    return sum([await store.result(job_id, item.item_id) is not None for item in await store.items(job_id)])


def test_version(tmp_path):
    out = cli("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("storyloom ")


def test_run_then_status(tmp_path):
    project(tmp_path)
    out = cli("run", "jobs/cli-job.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "cli-job: completed" in out.stdout and "6/6 completed" in out.stdout
    assert "[cli-job] 100% 6/6 done" in out.stderr  # the plain progress sink
    files = sorted(p.name for p in (tmp_path / "storyloom-out" / "cli-job").iterdir())
    assert files == [f"rain-ch{i}.md" for i in range(1, 7)] + ["report.html", "report.json", "report.md"]
    text = (tmp_path / "storyloom-out" / "cli-job" / "rain-ch1.md").read_text(encoding="utf-8")
    assert "ข้อความจำลอง" in text  # simulated, and says so in Thai
    status = cli("status", "cli-job", "--json", cwd=tmp_path)
    data = json.loads(status.stdout)
    assert data["state"] == "completed"
    assert data["counts"] == {"pending": 0, "running": 0, "completed": 6, "failed": 0, "skipped": 0}
    assert data["cost_usd"] > 0 and data["attempts"] == 6
    listing = cli("status", cwd=tmp_path)
    assert "cli-job  chapter_writing  completed  6 completed" in listing.stdout


def test_finished_with_failures_exits_1(tmp_path):
    project(tmp_path)
    settings = (tmp_path / "storyloom.yaml").read_text().replace("seed: 3", "seed: 3\n    errors: {INVALID_INPUT: 0.5}")
    (tmp_path / "storyloom.yaml").write_text(settings)
    out = cli("run", "jobs/cli-job.yaml", "-q", cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "failed" in out.stdout


def test_bad_input_exits_2_with_one_clean_message_and_writes_nothing(tmp_path):
    job = project(tmp_path)
    job.write_text(job.read_text().replace("chapter_writing", "chapter_writng"))
    out = cli("run", "jobs/cli-job.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "jobs/cli-job.yaml:3:11" in out.stderr and "chapter_writing" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / ".storyloom").exists() and not (tmp_path / "storyloom-out").exists()


def test_validate_checks_many_files(tmp_path):
    good = project(tmp_path)
    bad = tmp_path / "jobs" / "bad.yaml"
    bad.write_text("job_id: ../x\njob_type: export\nitems: [{item_id: a}]\n")
    out = cli("validate", str(good), str(bad), cwd=tmp_path)
    assert out.returncode == 2
    assert "cli-job.yaml: ok (chapter_writing, 6 items)" in out.stdout
    assert "bad.yaml:1:9" in out.stderr and "job_id" in out.stderr
    assert not (tmp_path / ".storyloom").exists()


def test_usage_errors_exit_2(tmp_path):
    assert cli("run", cwd=tmp_path).returncode == 2
    out = cli("run", "missing.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "missing.yaml" in out.stderr and "Traceback" not in out.stderr
    out = cli("resume", "nope", cwd=tmp_path)
    assert out.returncode == 2 and "no job 'nope'" in out.stderr
    out = cli("run", "x.yaml", "--max-parallel", "0", cwd=tmp_path)
    assert out.returncode == 2 and "--max-parallel" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_puts_running_items_back_and_exits_130(tmp_path, signum):
    # Fifteen seconds of work: on a loaded machine the status call below can take several.
    project(tmp_path, n=100, latency=600, parallel=4)
    proc = popen("run", "jobs/cli-job.yaml", "--grace-period", "0.1s", cwd=tmp_path)
    wait_for_completed(tmp_path, "cli-job", 4)
    status = json.loads(cli("status", "cli-job", "--json", cwd=tmp_path).stdout)
    assert status["state"] == "running"
    # An item claimed but not yet routed (its start not yet committed) has no model yet.
    assert status["running"] and {r["model"] for r in status["running"]} <= {"sim", None}
    assert any(r["model"] == "sim" for r in status["running"])
    assert len(status["running"]) <= 4
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stdout + stderr
    assert "storyloom resume cli-job" in stderr
    assert "Traceback" not in stderr
    states = read_store(tmp_path, all_counts)
    job_state = read_store(tmp_path, lambda store: store.get_job("cli-job")).state
    assert "running" not in states and states.get("pending", 0) > 0
    assert job_state == "interrupted"
    project(tmp_path, n=100, latency=0, parallel=4)  # the same job; the rest need not take 14 s more
    out = cli("resume", "cli-job", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "100/100 completed" in out.stdout


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_completes_every_item_exactly_once(tmp_path, store_url, main_in):
    project(tmp_path, n=60, latency=100, parallel=6, store=store_url)
    proc = popen("run", "jobs/cli-job.yaml", "-q", cwd=tmp_path)
    wait_for_completed(tmp_path, "cli-job", 10)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait(timeout=10)
    assert (tmp_path / ".storyloom" / "storyloom.db").exists() == (store_url is None)  # the store chosen
    before = read_store(tmp_path, lambda store: store.counts("cli-job"))
    assert before["running"] > 0  # the kill really left work in flight
    assert before["completed"] < 60
    out = main_in("resume", "cli-job", "-q", cwd=tmp_path)  # in-process: the killed run was the process
    assert out.returncode == 0, out.stderr
    per_item = read_store(tmp_path, completed_attempts)
    assert read_store(tmp_path, all_counts) == {"completed": 60}
    assert len(per_item) == 60 and all(count == 1 for count in per_item.values())
    assert read_store(tmp_path, lambda store: results(store, "cli-job")) == 60
    # A temporary the kill left is kept for TMP_MIN_AGE_S (it could be another writer's);
    # every leftover must be one that remove_temporary recognises.
    remove_temporary(tmp_path / "storyloom-out" / "cli-job", min_age=0)
    leftovers = [p.name for p in (tmp_path / "storyloom-out" / "cli-job").iterdir() if "tmp" in p.name]
    assert leftovers == []


def test_the_seed_job_definition_runs_end_to_end(tmp_path):
    """The studio's own example, exactly as the seed wrote it."""
    shutil.copy(ROOT / "tests" / "data" / "seed_job.json", tmp_path / "seed_job.json")
    (tmp_path / "storyloom.yaml").write_text("models: {simulated: {latency_ms: 0}}\n")
    out = cli("run", "seed_job.json", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "batch-2025-01-15-001: completed" in out.stdout and "2/2 completed" in out.stdout
    assert sorted(p.name for p in (tmp_path / "storyloom-out" / "batch-2025-01-15-001").glob("*.md"))[:2] == [
        "item-001.md", "item-002.md"]


@pytest.mark.slow
def test_two_workers_share_the_queue_and_one_finishes_what_a_killed_one_left(tmp_path, store_url, main_in):
    project(tmp_path, n=30, latency=100, parallel=3, job_id="first", store=store_url)
    project(tmp_path, n=30, latency=100, parallel=3, job_id="second", store=store_url)
    for job_id in ("first", "second"):
        out = main_in("submit", f"jobs/{job_id}.yaml", cwd=tmp_path)  # in-process: the workers are the processes
        assert out.returncode == 0 and f"{job_id}: queued, 30 items" in out.stdout, out.stderr
    doomed = popen("work", "-q", cwd=tmp_path)
    survivor = popen("work", "-q", cwd=tmp_path)
    def held_by_doomed() -> list:
        return [r for job in ("first", "second") for r in read_store(tmp_path, lambda store: store.running(job))
                if f":{doomed.pid}:" in r.owner]

    try:
        wait_for_completed(tmp_path, "first", 6)
        deadline = time.monotonic() + 30
        while not held_by_doomed():  # on a busy machine the survivor may hold everything for a moment
            assert time.monotonic() < deadline, "the doomed worker never held an item"
            time.sleep(0.02)
        doomed.kill()  # SIGKILL: its running items stay claimed by a dead process
        doomed.wait(timeout=10)
        assert held_by_doomed()  # the kill really left items claimed
        wait_for_completed(tmp_path, "first", 30, timeout=60)
        wait_for_completed(tmp_path, "second", 30, timeout=60)
        # Every item is done; the job's own end (reports, then its state) follows
        # a few store calls later: a signal before it would leave it interrupted.
        wait_for_job_state(tmp_path, ("first", "second"), "completed")
        survivor.send_signal(signal.SIGINT)
        stdout, stderr = survivor.communicate(timeout=30)
        assert survivor.returncode == 130, stdout + stderr
        assert "Traceback" not in stderr
    finally:  # never leave a worker behind, whatever failed
        for proc in (doomed, survivor):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    per_item = read_store(tmp_path, completed_attempts)
    jobs = {row.job_id: row.state for row in read_store(tmp_path, lambda store: store.list_jobs())}
    assert len(per_item) == 60 and all(count == 1 for count in per_item.values())  # exactly once
    assert jobs == {"first": "completed", "second": "completed"}
    assert "running" not in read_store(tmp_path, all_counts)

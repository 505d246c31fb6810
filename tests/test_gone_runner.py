"""A job left ``running`` by a worker that is gone (its last state write
failed, or it was killed) is shown as ``interrupted`` by ``status`` and the
report, with how to continue it; reading it writes nothing. "Gone" is a
heartbeat older than the worker's lease, or none: never a pid check."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import trio

import storyloom
from storyloom.store import WorkerInfo
from storyloom.store.owner import make_owner

SETTINGS = "models:\n  sim: {provider: simulated, latency_ms: 1, seed: 1}\ndefault_models: [sim]\n"
JOB = "job_id: left\njob_type: qc_processing\nitems:\n  - {item_id: a}\n  - {item_id: b}\n"


def gone_owner() -> str:
    """The owner string of a process on this host that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return f"{socket.gethostname()}:{int(done.stdout)}:0123abcd"


def left_running(loom, runner: str | None) -> tuple:
    """Submit the job and store it as running for ``runner``; returns the stored row."""
    loom.write("storyloom.yaml", SETTINGS)
    loom.submit(JOB)

    async def mark(store):
        await store.set_job_state("left", "running", runner=runner)
        return await store.get_job("left")

    return loom.read(mark)


def stored(loom) -> tuple:
    async def read(store):
        row = await store.get_job("left")
        return row.state, row.reason, row.runner, row.updated_at

    return loom.read(read)


def test_status_shows_a_job_whose_worker_is_gone_as_interrupted_and_writes_nothing(loom):
    runner = gone_owner()
    row = left_running(loom, runner)
    status = trio.run(lambda: storyloom.job_status("left", options=loom.options()))
    host_pid = runner.rsplit(":", 1)[0]
    assert status["state"] == "interrupted"
    assert status["reason"] == f"its worker ({host_pid}) is gone; storyloom resume left continues"
    listed = trio.run(lambda: storyloom.job_status(options=loom.options()))
    assert [(j["job_id"], j["state"]) for j in listed["jobs"]] == [("left", "interrupted")]
    assert stored(loom) == ("running", None, runner, row.updated_at)  # display only


def test_the_report_shows_a_job_whose_worker_is_gone_as_interrupted(loom):
    runner = gone_owner()
    left_running(loom, runner)
    _name, text = trio.run(lambda: storyloom.render_report("left", "json", options=loom.options()))
    report = json.loads(text)
    assert report["status"] == "interrupted" and "is gone; storyloom resume left continues" in report["reason"]
    _name, text = trio.run(lambda: storyloom.render_report("left", "md", options=loom.options()))
    assert "interrupted" in text and "storyloom resume left continues" in text
    assert stored(loom)[0] == "running"


def beat(loom, owner: str, lease_s: float, host: str = "elsewhere", pid: int = 1) -> None:
    """``owner`` writes a heartbeat (lease_s <= 0: one already older than its lease)."""
    loom.read(lambda store: store.heartbeat(WorkerInfo(owner, host, pid, 0.0, lease_s)))


def test_a_job_whose_worker_beats_is_shown_running(loom):
    runner = "another-host:1:0123abcd"  # pid 1 on another host: only the heartbeat can tell
    left_running(loom, runner)
    beat(loom, runner, 30.0)
    status = trio.run(lambda: storyloom.job_status("left", options=loom.options()))
    assert (status["state"], status["reason"]) == ("running", None)


def test_a_live_process_whose_heartbeat_is_older_than_its_lease_is_gone(loom):
    """A stopped (SIGSTOP) or cut-off worker: its process lives, its heartbeat has aged."""
    runner = make_owner()  # this very process, alive
    left_running(loom, runner)
    beat(loom, runner, -1.0)
    status = trio.run(lambda: storyloom.job_status("left", options=loom.options()))
    assert status["state"] == "interrupted" and "is gone" in status["reason"]
    beat(loom, runner, 30.0)  # it beats again
    status = trio.run(lambda: storyloom.job_status("left", options=loom.options()))
    assert status["state"] == "running"


def test_a_running_job_with_no_runner_recorded_is_shown_as_stored(loom):
    left_running(loom, None)  # a store written before runners were recorded
    status = trio.run(lambda: storyloom.job_status("left", options=loom.options()))
    assert (status["state"], status["reason"]) == ("running", None)


def test_resume_completes_a_job_whose_worker_is_gone_and_it_then_shows_completed(loom):
    left_running(loom, gone_owner())
    assert loom.resume("left").summary.status == "completed"
    status = trio.run(lambda: storyloom.job_status("left", options=loom.options()))
    assert (status["state"], status["reason"]) == ("completed", None)
    assert stored(loom)[2] is None


def test_a_job_another_live_worker_still_runs_is_shown_running(loom):
    """Two workers on one job: the one that set it running last is gone, the other still holds an item."""
    left_running(loom, gone_owner())

    async def claim(store):  # leased for 30 s by a worker that wrote no heartbeat: the lease is what counts
        return [c.item_id for c in await store.claim("left", 1, 0.0, make_owner(), lease_s=30.0)]

    assert loom.read(claim) == ["a"]
    status = trio.run(lambda: storyloom.job_status("left", options=loom.options()))
    assert (status["state"], status["reason"]) == ("running", None)
    listed = trio.run(lambda: storyloom.job_status(options=loom.options()))
    assert [j["state"] for j in listed["jobs"]] == ["running"]

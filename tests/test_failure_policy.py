"""The seed's failure policy: bands at their edges, pause and escalate, notify once per entry,
the pause surviving a restart, and its settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sample_plugins import scripted
from storyloom.errors import ConfigError
from storyloom.loader import load_settings
from storyloom.plugins.failure_policy import band
from storyloom.settings import FailurePolicy

ROOT = Path(__file__).resolve().parent.parent
POLICY = FailurePolicy()  # min_items 10, notify from 20%, pause above 50%


@pytest.mark.parametrize("finished, failed, expected", [
    (9, 9, "ok"),  # fewer than min_items finished: too early to judge
    (10, 10, "pause"),
    (10, 6, "pause"),  # 60%
    (10, 5, "notify"),  # exactly 50% is not above 50%
    (100, 51, "pause"),
    (100, 50, "notify"),
    (10, 2, "notify"),  # exactly 20%: the notify band starts here
    (100, 20, "notify"),
    (100, 19, "ok"),  # just below 20%
    (10, 1, "ok"),
    (10, 0, "ok"),
])
def test_band_edges(finished, failed, expected):
    assert band(POLICY, finished, failed) == expected


def test_band_follows_configured_thresholds():
    strict = FailurePolicy(min_items=3, notify_from=0.0, pause_above=0.25)
    assert band(strict, 2, 2) == "ok"
    assert band(strict, 4, 1) == "notify"  # 25% is not above 25%
    assert band(strict, 3, 1) == "pause"
    assert band(FailurePolicy(pause_above=1.0), 10, 10) == "notify"  # 1 never pauses


# -- in a real batch (scripted provider, one item at a time so the order is fixed)

SETTINGS = """
models:
  s1: {{provider: scripted, latency: 0.005, script: {script}}}
default_models: [s1]
retry_config: {{max_retries: 0}}
{extra}"""


def job(n: int, job_id: str = "fp") -> str:
    items = "".join(f"  - {{item_id: it-{i:02d}}}\n" for i in range(n))
    return f"job_id: {job_id}\njob_type: qc_processing\nconfig: {{max_parallel: 1}}\nitems:\n{items}"


def script(failing: list[int], kind: str = "INVALID_INPUT") -> dict:
    return {f"it-{i:02d}": [kind] for i in failing}


def events(loom, job_id: str = "fp") -> list[dict]:
    path = loom.out_dir / job_id / "events.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(autouse=True)
def _reset():
    scripted.reset()


def test_above_half_pauses_escalates_by_kind_and_resume_continues(loom):
    failing = {**script([0, 1, 2, 3]), **script([4, 5], "TIMEOUT")}
    loom.write("storyloom.yaml", SETTINGS.format(script=failing, extra=""))
    result = loom.run(job(20), plugins=(scripted,), progress=("eventlog",))
    # Six of the first ten failed: the tenth finish pauses the job.
    assert result.summary.status == "paused" and result.summary.exit_code == 3
    assert result.summary.reason == "failure rate 60% (6 of 10 finished items) is above 50%"
    counts = result.counts
    # The next item may already have started when the tenth was acknowledged: it finishes.
    assert counts["failed"] == 6 and counts["running"] == 0 and 4 <= counts["completed"] <= 5
    assert counts["pending"] == 20 - 6 - counts["completed"]
    (escalation,) = [e for e in events(loom) if e["kind"] == "escalate"]
    data = escalation["data"]
    assert data["failures_by_kind"] == {"INVALID_INPUT": 4, "TIMEOUT": 2}
    assert data["failed_items"]["TIMEOUT"] == ["it-04", "it-05"]
    assert "INVALID_INPUT 4 (it-00, it-01, it-02, it-03); TIMEOUT 2 (it-04, it-05)" in data["message"]
    assert "storyloom resume fp" in data["message"]
    # No notify on the way: the tenth finish went straight from too-few to the pause band.
    assert [e["kind"] for e in events(loom)].count("notify") == 0

    # After a fix, resume counts this run's items: ten successes, no new pause.
    resumed = loom.resume("fp", plugins=(scripted,))
    assert resumed.summary.status == "failed"  # the six earlier failures stay failed
    resumed.assert_outcomes(completed=14, failed=6)


def test_running_items_finish_but_nothing_new_starts(loom):
    loom.write("storyloom.yaml", SETTINGS.format(script=script(list(range(12))), extra=""))
    path = job(40).replace("max_parallel: 1", "max_parallel: 4")
    result = loom.run(path, plugins=(scripted,))
    assert result.summary.status == "paused"
    assert result.counts["running"] == 0
    started = len(scripted.STATS["calls"])
    finished = result.counts["completed"] + result.counts["failed"]
    assert started == finished  # every item that started was finished and recorded
    # The pause came at the tenth acknowledged finish; what ran on is at most the rest of
    # that commit group and the items already in flight (4 each at max_parallel 4).
    assert finished <= 10 + 2 * 4
    assert result.counts["pending"] == 40 - finished


def test_notify_once_each_time_the_band_is_entered(loom):
    # Finishes 1-3 fail: at the 10th the rate is 30% (enter: notify). Successes bring it
    # to 3/16 < 20% (leave). Finishes 17 and 18 fail: 4/17 = 23.5% (enter again: notify),
    # 5/18 = 27.8% (still inside: quiet).
    loom.write("storyloom.yaml", SETTINGS.format(script=script([0, 1, 2, 16, 17]), extra=""))
    result = loom.run(job(30), plugins=(scripted,), progress=("eventlog",))
    assert result.summary.status == "failed"  # notified, never paused
    notes = [e["data"] for e in events(loom) if e["kind"] == "notify"]
    assert [(n["finished"], n["failed"]) for n in notes] == [(10, 3), (17, 4)]
    assert notes[0]["message"].startswith("elevated failure rate 30% (3 of 10 finished items)")


def test_fewer_than_min_items_never_pause(loom):
    loom.write("storyloom.yaml", SETTINGS.format(script=script(list(range(9))), extra=""))
    result = loom.run(job(9), plugins=(scripted,))
    assert result.summary.status == "failed"
    result.assert_outcomes(failed=9)


def test_the_last_item_escalates_without_a_pointless_pause(loom):
    loom.write("storyloom.yaml", SETTINGS.format(script=script(list(range(6))), extra=""))
    result = loom.run(job(10), plugins=(scripted,), progress=("eventlog",))
    assert result.summary.status == "failed" and result.summary.exit_code == 1
    (escalation,) = [e for e in events(loom) if e["kind"] == "escalate"]
    assert "nothing was left to run" in escalation["data"]["message"]


def test_thresholds_come_from_the_settings(loom):
    extra = "failure_policy: {min_items: 4, notify_from: 0.1, pause_above: 0.3}\n"
    loom.write("storyloom.yaml", SETTINGS.format(script=script([0, 1]), extra=extra))
    result = loom.run(job(12), plugins=(scripted,))
    assert result.summary.status == "paused"
    assert result.summary.reason == "failure rate 50% (2 of 4 finished items) is above 30%"


def test_p_no_failure_policy_turns_it_off(loom):
    loom.write("storyloom.yaml", SETTINGS.format(script=script(list(range(15))), extra=""))
    path = loom.write("job.yaml", job(20))
    from storyloom.api import run_job_sync

    summary = run_job_sync(path, options=loom.options(plugins=("no:failure_policy",)), plugins=(scripted,))
    assert summary.status == "failed" and summary.counts["failed"] == 15


# -- the pause survives the process: run, exit 3, status from a new process, resume


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    env.update(STORYLOOM_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONPATH=str(ROOT / "tests"))
    return subprocess.run([sys.executable, "-m", "storyloom.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_the_pause_survives_a_restart_and_resume_continues(tmp_path):
    extra = "plugins: [sample_plugins.scripted]\n"
    (tmp_path / "storyloom.yaml").write_text(SETTINGS.format(script=script(list(range(8))), extra=extra))
    (tmp_path / "job.yaml").write_text(job(20))
    first = cli("run", "job.yaml", "-q", cwd=tmp_path)
    assert first.returncode == 3, first.stderr
    assert "failure rate 80% (8 of 10 finished items) is above 50%" in first.stderr
    assert "storyloom resume fp" in first.stderr

    status = json.loads(cli("status", "fp", "--json", cwd=tmp_path).stdout)
    assert status["state"] == "paused"
    assert status["reason"] == "failure rate 80% (8 of 10 finished items) is above 50%"
    assert status["counts"]["pending"] in (9, 10) and status["counts"]["running"] == 0  # one may have been in flight

    resumed = cli("resume", "fp", "-q", cwd=tmp_path)
    assert resumed.returncode == 1, resumed.stderr  # finished; the eight failures remain
    assert "fp: failed" in resumed.stdout and "12/20 completed, 8 failed" in resumed.stdout
    assert json.loads(cli("status", "fp", "--json", cwd=tmp_path).stdout)["state"] == "failed"


# -- settings


def test_settings_are_read(tmp_path):
    path = tmp_path / "storyloom.yaml"
    path.write_text("failure_policy: {min_items: 25, notify_from: 0.1, pause_above: 0.75}\n")
    assert load_settings(path).failure_policy == FailurePolicy(min_items=25, notify_from=0.1, pause_above=0.75)
    assert load_settings(None).failure_policy == FailurePolicy(10, 0.2, 0.5)


@pytest.mark.parametrize("text, expected", [
    ("failure_policy: {notify_from: 0.6, pause_above: 0.5}\n",
     "1:31: at failure_policy.notify_from: notify_from (0.6) is above pause_above (0.5)"),
    ("failure_policy: {pause_above: 50}\n", "1:31: at failure_policy.pause_above: expected number <= 1, got integer 50"),
    ("failure_policy: {min_items: 0}\n", "1:29: at failure_policy.min_items: expected integer >= 1, got integer 0"),
    ("failure_policy: {pause_abov: 0.5}\n", "1:18: at failure_policy.pause_abov: unknown key 'pause_abov'; "
                                             "did you mean 'pause_above'? (known: min_items, notify_from, pause_above)"),
])
def test_bad_settings_say_where(tmp_path, text, expected):
    path = tmp_path / "storyloom.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == f"{path}:{expected}"

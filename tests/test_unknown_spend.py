"""Spend is never under-counted: an attempt is on disk from the moment its
request is sent. One whose outcome never arrives (its worker killed, or no
reply within ``timeout_per_item``) stays "sent, outcome unknown" and counts
its worst case in ``status``, the reports and the budget of a resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storyloom.cli import main
from storyloom.testing import Loom

SETTINGS = """
models:
  sim: {{provider: simulated, latency_ms: 1, output_tokens: 40, hang: {hang}, seed: 4,
         price: {{input: 100.0, output: 400.0}}}}
default_models: [sim]
progress: []
"""
JOB = """
job_id: u1
job_type: qc_processing
config: {{max_parallel: 4, max_tokens: 200, max_retries: 0, timeout_per_item: {timeout}}}
items:
  - {{project_id: p, chapters: 1-{n}}}
"""


def costs(loom: Loom):
    return loom.read(lambda store: store.costs("u1"))


def test_a_timed_out_attempt_counts_its_worst_case(loom, capsys):
    loom.write("storyloom.yaml", SETTINGS.format(hang=1.0))  # no reply, ever
    result = loom.run(JOB.format(n=3, timeout="0.2s"))
    assert result.counts["failed"] == 3
    totals = costs(loom)
    assert (totals.attempts, totals.cost_usd, totals.unknown_attempts) == (3, 0.0, 3)
    # Each reserved its worst case: every one of its 200 max_tokens ($0.08) and its prompt.
    assert 3 * 200 * 400 / 1e6 < totals.unknown_usd < 3 * 0.1
    assert main(["status", "u1", "--state-dir", str(loom.state_dir)]) == 0
    out = capsys.readouterr().out
    assert f"  unknown: 3 attempts sent, outcome unknown, up to ${totals.unknown_usd:.4f}\n" in out


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    return subprocess.run([sys.executable, "-m", "storyloom.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def wait_for_sent(loom: Loom, at_least: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if costs(loom).unknown_attempts >= at_least:
                return
        except Exception:  # not stored yet
            pass
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} attempts sent within {timeout}s")


@pytest.mark.slow
def test_attempts_lost_with_a_killed_worker_are_reported_and_counted_by_the_next_budget(loom, capsys):
    loom.write("storyloom.yaml", SETTINGS.format(hang=1.0))  # every request stays in flight
    loom.write("job.yaml", JOB.format(n=12, timeout="10m"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    proc = subprocess.Popen([sys.executable, "-m", "storyloom.cli", "run", "job.yaml", "-q"], cwd=loom.path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_sent(loom, 4)  # max_parallel: four requests on their way
    finally:
        proc.kill()  # SIGKILL: no cleanup at all
        proc.communicate(timeout=10)
    totals = costs(loom)
    assert (totals.unknown_attempts, totals.attempts, totals.cost_usd) == (4, 0, 0.0)
    worst = totals.unknown_usd
    assert worst > 0

    # What the commands show, in-process (the kill above and the resume below are the
    # process boundaries; four more interpreters would only add start-up time).
    def shown(*args: str) -> str:
        assert main([*args, "--state-dir", str(loom.state_dir)]) == 0
        return capsys.readouterr().out

    assert f"  unknown: 4 attempts sent, outcome unknown, up to ${worst:.4f}\n" in shown("status", "u1")
    data = json.loads(shown("status", "u1", "--json"))
    assert (data["unknown_attempts"], data["unknown_usd"]) == (4, pytest.approx(worst))
    report = json.loads(shown("report", "u1", "--format", "json"))
    assert (report["unknown_attempts"], report["unknown_usd"]) == (4, pytest.approx(worst))
    assert "unknown_outcomes" in {r["code"] for r in report["recommendations"]}
    md = shown("report", "u1")
    assert f"- **Outcome Unknown:** 4 attempts sent, outcome unknown, up to ${worst:.4f}" in md

    # A budget that would fit five items' worst case had nothing been sent fits one more at
    # most once the four maybe-billed ones count: the resume sends at most one request.
    resumed = cli("resume", "u1", "--budget-usd", f"{worst * 1.2:.6f}", "-q", cwd=loom.path)
    assert resumed.returncode == 3, resumed.stdout + resumed.stderr
    assert "of it the worst case of attempts sent, outcome unknown" in resumed.stderr
    after = costs(loom)
    assert after.unknown_attempts == 4  # nothing more was sent
    assert after.unknown_usd == pytest.approx(worst)


def test_a_simulated_rejection_is_not_counted_as_unknown(loom):
    loom.write("storyloom.yaml", SETTINGS.format(hang=0.0).replace("seed: 4,", "seed: 4, errors: {INVALID_INPUT: 1.0},"))
    result = loom.run(JOB.format(n=2, timeout="10s"))
    assert result.counts["failed"] == 2
    assert (costs(loom).attempts, costs(loom).unknown_attempts) == (2, 0)  # "rejected requests consume nothing"

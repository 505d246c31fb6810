"""The kernel end to end: limits, timeouts, retries, priorities, control, hooks."""

from __future__ import annotations

import pytest
import trio

import storyloom
from sample_plugins import scripted
from storyloom import ErrorKind

FAST_RETRY = "retry_config: {max_retries: 2, retry_delay: {initial: 0.05s, multiplier: 2, max: 0.2s}}\n"


def settings(script: dict | None = None, latency: float = 0.01, extra: str = "") -> str:
    return (
        "models:\n"
        f"  s1: {{provider: scripted, latency: {latency}, script: {script or {}}}}\n"
        f"  s2: {{provider: scripted, latency: {latency}, script: {script or {}}}}\n"
        "default_models: [s1]\n" + FAST_RETRY + extra
    )


def job(n: int = 4, job_type: str = "qc_processing", extra: str = "", item_extra: str = "") -> str:
    items = "".join(f"  - {{item_id: it-{i}, project_id: p{i % 3}, chapter_num: {i}{item_extra}}}\n" for i in range(n))
    return f"job_id: k1\njob_type: {job_type}\n{extra}items:\n{items}"


@pytest.fixture(autouse=True)
def _reset():
    scripted.reset()


def test_items_complete_and_results_are_written(loom):
    loom.write("storyloom.yaml", settings())
    result = loom.run(job(6), plugins=(scripted,))
    result.assert_outcomes(completed=6)
    assert result.summary.exit_code == 0
    files = sorted(p.name for p in (loom.out_dir / "k1").iterdir())
    assert files == [f"it-{i}.md" for i in range(6)] + ["report.html", "report.json", "report.md"]
    assert (loom.out_dir / "k1" / "it-0.md").read_text(encoding="utf-8") == "text for it-0"
    assert result.summary.cost_usd == 0  # scripted models have no price


def test_max_parallel_bounds_concurrency(loom):
    loom.write("storyloom.yaml", settings(latency=0.05))
    result = loom.run(job(30, extra="config: {max_parallel: 3}\n"), plugins=(scripted,))
    result.assert_outcomes(completed=30)
    assert scripted.STATS["max_in_flight"] == 3


def test_batch_limits_from_settings_and_flags(loom):
    loom.write("storyloom.yaml", settings(latency=0.05, extra="batch_limits: {qc_processing: {max_parallel: 2}}\n"))
    loom.run(job(10), plugins=(scripted,))
    assert scripted.STATS["max_in_flight"] == 2
    scripted.reset()
    loom.run(job(10).replace("k1", "k2"), plugins=(scripted,), max_parallel=4)
    assert scripted.STATS["max_in_flight"] == 4


def test_timeout_is_a_timeout_error_and_retries_are_bounded(loom):
    loom.write("storyloom.yaml", settings({"it-0": ["hang", "hang", "hang", "hang"]}))
    result = loom.run(job(2, extra="config: {timeout_per_item: 0.1s}\n"), plugins=(scripted,))
    result.assert_outcomes(completed=1, failed=1)
    assert result.summary.exit_code == 1
    row = result.items["it-0"]
    assert row.error_kind == ErrorKind.TIMEOUT
    assert row.attempts == 3  # max_retries 2 + 1
    assert "timeout_per_item" in row.error


def test_retryable_error_then_success(loom):
    loom.write("storyloom.yaml", settings({"it-1": ["TEMPORARY_ERROR", "API_RATE_LIMIT", "ok"]}))
    result = loom.run(job(2), plugins=(scripted,))
    result.assert_outcomes(completed=2)
    assert result.items["it-1"].attempts == 3
    states = [(c["item"].item_id, c["outcome"].state) for c in result.recorder.calls["loom_item_finished"]]
    assert states.count(("it-1", "retrying")) == 2
    # The retry waited for its delay (initial 0.05 s, equal jitter: at least half of it).
    times = [t for (item_id, _attempt, _model, t) in scripted.STATS["calls"] if item_id == "it-1"]
    assert times[1] - times[0] >= 0.025


@pytest.mark.parametrize("kind", ["INVALID_INPUT", "INTERNAL_ERROR"])
def test_non_retryable_errors_fail_at_once(loom, kind):
    loom.write("storyloom.yaml", settings({"it-0": [kind, "ok"]}))
    result = loom.run(job(1), plugins=(scripted,))
    result.assert_outcomes(failed=1)
    assert result.items["it-0"].attempts == 1
    assert result.items["it-0"].error_kind == kind


@pytest.mark.parametrize("kind", ["AUTH_ERROR", "QUOTA_EXCEEDED"])
def test_auth_and_quota_errors_take_the_model_out_and_the_item_moves_on(loom, kind):
    loom.write("storyloom.yaml", settings({"it-0": [kind]}))
    result = loom.run(job(4, extra="models: [s1, s2]\nconfig: {max_parallel: 1}\n"), plugins=(scripted,))
    result.assert_outcomes(completed=4)
    calls = scripted.STATS["calls"]
    assert calls[0][:3] == ("it-0", 1, "s1")
    assert {model for (_i, _a, model, _t) in calls[1:]} == {"s2"}  # s1 is out for the rest of the batch
    assert result.items["it-0"].attempts == 2


@pytest.mark.parametrize("kind", ["AUTH_ERROR", "QUOTA_EXCEEDED"])
def test_when_no_model_can_come_back_items_fail_with_the_reason(loom, kind):
    loom.write("storyloom.yaml", settings({"it-1": [kind]}))
    result = loom.run(job(3, extra="config: {max_parallel: 1}\n"), plugins=(scripted,))
    result.assert_outcomes(completed=1, failed=2)
    assert result.summary.exit_code == 1
    for item_id in ("it-1", "it-2"):
        row = result.items[item_id]
        assert row.error_kind == kind
        assert row.error.startswith("no model left:") and f"scripted {kind}" in row.error
    # The item whose attempt met the error was not charged a retry for it.
    assert result.items["it-1"].attempts == 2


def test_retry_on_failure_false_means_one_attempt(loom):
    loom.write("storyloom.yaml", settings({"it-0": ["TEMPORARY_ERROR", "ok"]}))
    result = loom.run(job(1, extra="config: {retry_on_failure: false}\n"), plugins=(scripted,))
    result.assert_outcomes(failed=1)
    assert result.items["it-0"].attempts == 1


def test_a_crashing_provider_fails_the_item_not_the_batch(loom, capsys):
    loom.write("storyloom.yaml", settings({"it-0": ["crash"]}))
    result = loom.run(job(3), plugins=(scripted,))
    result.assert_outcomes(completed=2, failed=1)
    assert result.items["it-0"].error_kind == ErrorKind.INTERNAL_ERROR
    assert "RuntimeError: scripted crash" in result.items["it-0"].error
    assert "scripted crash" in capsys.readouterr().err  # the traceback is shown, not swallowed


def test_priority_order_critical_first_fifo_within_level(loom):
    loom.write("storyloom.yaml", settings())
    items = "".join(
        f"  - {{item_id: {name}, priority: {level}}}\n"
        for name, level in [("n1", "normal"), ("l1", "low"), ("c1", "critical"), ("h1", "high"),
                            ("n2", "normal"), ("c2", "critical"), ("l2", "low"), ("h2", "high")]
    )
    loom.run(f"job_id: prio\njob_type: qc_processing\nconfig: {{max_parallel: 1}}\nitems:\n{items}",
             plugins=(scripted,))
    order = [item_id for (item_id, *_rest) in scripted.STATS["calls"]]
    assert order == ["c1", "c2", "h1", "h2", "n1", "n2", "l1", "l2"]


def test_model_rotation_sends_a_retry_to_another_model(loom):
    loom.write("storyloom.yaml", settings({"it-0": ["TEMPORARY_ERROR", "TEMPORARY_ERROR", "ok"]}))
    loom.run(job(1, extra="models: [s1, s2]\nconfig: {model_rotation: true}\n"), plugins=(scripted,))
    models = [model for (_item, _attempt, model, _t) in scripted.STATS["calls"]]
    assert len(models) == 3
    assert models[0] != models[1] and models[1] != models[2]


def test_items_skipped_in_the_file_do_not_run(loom):
    loom.write("storyloom.yaml", settings())
    result = loom.run(job(3).replace("{item_id: it-1,", "{item_id: it-1, status: skipped,"), plugins=(scripted,))
    result.assert_outcomes(completed=2, skipped=1)
    assert "it-1" not in {c[0] for c in scripted.STATS["calls"]}


class Pauser:
    """Pauses the batch after its second completed item."""

    def __init__(self):
        self.control = None

    @storyloom.hookimpl
    def loom_batch_started(self, control):
        self.control = control

    @storyloom.hookimpl
    def loom_item_finished(self, outcome):
        self.seen = getattr(self, "seen", 0) + (outcome.state == "completed")
        if self.seen == 2:
            self.control.pause("paused by test")


def test_pause_stops_dispatch_and_resume_finishes(loom):
    loom.write("storyloom.yaml", settings(latency=0.02))
    result = loom.run(job(20, extra="config: {max_parallel: 2}\n"), plugins=(scripted, Pauser()))
    assert result.summary.status == "paused" and result.summary.exit_code == 3
    assert result.summary.reason == "paused by test"
    assert result.counts["running"] == 0
    assert 2 <= result.counts["completed"] < 20
    first_run = result.counts["completed"]
    resumed = loom.resume("k1", plugins=(scripted,))
    resumed.assert_outcomes(completed=20)
    # Nothing ran twice: one successful call per item.
    assert len(scripted.STATS["calls"]) == 20
    assert first_run + len(resumed.recorder.calls["loom_item_finished"]) == 20


class Raiser:
    @storyloom.hookimpl
    def loom_item_finished(self):
        raise ValueError("a buggy plugin")


def test_a_raising_hook_does_not_stop_the_batch(loom, capsys):
    loom.write("storyloom.yaml", settings())
    result = loom.run(job(3), plugins=(scripted, Raiser()))
    result.assert_outcomes(completed=3)
    assert "a buggy plugin" in capsys.readouterr().err


def test_running_the_same_job_id_twice_is_a_usage_error(loom):
    loom.write("storyloom.yaml", settings())
    loom.run(job(1), plugins=(scripted,))
    with pytest.raises(Exception) as info:
        loom.run(job(1), plugins=(scripted,))
    assert "already exists" in str(info.value) and "storyloom resume k1" in str(info.value)


def test_cancelling_an_embedded_run_puts_items_back_and_resume_finishes(loom):
    from storyloom.api import run_job

    loom.write("storyloom.yaml", settings(latency=0.2))
    path = loom.write("job.yaml", job(10, extra="config: {max_parallel: 4}\n"))

    async def main():
        with trio.move_on_after(0.3):
            await run_job(path, options=loom.options(), plugins=(scripted,))

    trio.run(main)
    items = loom.items("k1")
    states = [row.state for row in items.values()]
    assert "running" not in states
    assert states.count("pending") >= 6
    resumed = loom.resume("k1", plugins=(scripted,))
    resumed.assert_outcomes(completed=10)

"""``budget_usd``: each attempt reserves its worst case before it is sent, so
the spend never passes the budget; at the limit the job pauses ("budget
reached", exit 3) and ``resume --budget-usd`` raises the limit for good.

Runs have a deadline: a budget that never lets a waiting attempt go (float
residue once held one for ever) fails the test instead of hanging the suite.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from storyloom import hookimpl
from storyloom.api import resume_job, run_job
from storyloom.budget import Budget
from storyloom.errors import UsageError
from storyloom.testing import HookRecorder, Loom, RunResult

#: A hung batch fails the test instead of the whole run.
DEADLINE = 30.0

SETTINGS = """
models:
  sim: {{provider: simulated, latency_ms: {latency}, output_tokens: {output}, seed: 5,
         price: {{input: {input_price}, output: {output_price}}}}}
default_models: [sim]
progress: []
reports: []
"""


def job(n: int, budget: float | None, *, job_id: str = "b1", max_tokens: int = 200, parallel: int = 4,
        language: str = "en", job_type: str = "qc_processing") -> str:
    head = f"job_id: {job_id}\njob_type: {job_type}\nlanguage: {language}\n"
    head += f"budget_usd: {budget}\n" if budget is not None else ""
    head += f"config: {{max_parallel: {parallel}, max_tokens: {max_tokens}}}\nitems:\n"
    return head + "".join(f"  - {{item_id: i{i}, title: Story {i}, genre: fantasy}}\n" for i in range(n))


def spent(loom: Loom, job_id: str) -> float:
    """What the store says every attempt cost (its totals over every attempt, failed ones included)."""
    return loom.read(lambda store: store.costs(job_id)).cost_usd


def run(loom: Loom, job_yaml: str, *, plugins: tuple = (), **overrides) -> RunResult:
    """``loom.run`` under a deadline."""
    path = loom.write("job.yaml", job_yaml)
    return _within_deadline(loom, lambda recorder: run_job(path, options=loom.options(**overrides),
                                                           plugins=(recorder, *plugins)))


def resume(loom: Loom, job_id: str, *, plugins: tuple = (), **overrides) -> RunResult:
    """``loom.resume`` under a deadline."""
    return _within_deadline(loom, lambda recorder: resume_job(job_id, options=loom.options(**overrides),
                                                              plugins=(recorder, *plugins)))


def _within_deadline(loom: Loom, start) -> RunResult:
    recorder = HookRecorder()

    async def main():
        with trio.fail_after(DEADLINE):
            return await start(recorder)

    summary = trio.run(main)
    return RunResult(summary, recorder, loom.items(summary.job_id))


def write_settings(loom: Loom, latency: float = 5, output: int = 50, input_price: float = 100.0,
                   output_price: float = 400.0) -> None:
    # Fixed-point: YAML reads 5e-324 (no dot) as a string, and the schema rightly refuses it.
    loom.write("storyloom.yaml", SETTINGS.format(latency=latency, output=output, input_price=f"{input_price:.9f}",
                                                 output_price=f"{output_price:.9f}"))


def test_at_the_limit_the_job_pauses_with_exit_code_3(loom):
    write_settings(loom)
    # Each item reserves its prompt and 200 output tokens (about $0.09) and costs about $0.03.
    result = run(loom, job(30, budget=0.5))
    assert result.summary.status == "paused" and result.summary.exit_code == 3
    # The reason says what was spent, what is in flight and what one more item needs.
    assert result.summary.reason == (f"budget reached: spent ${spent(loom, 'b1'):.4f} of $0.5000, nothing in "
                                     "flight; one more item needs up to $0.0904")
    assert 0 < result.counts["completed"] < 30
    assert result.counts["completed"] + result.counts["pending"] == 30  # nothing failed, nothing lost
    assert spent(loom, "b1") <= 0.5
    assert result.summary.cost_usd == spent(loom, "b1")


def test_a_job_within_its_budget_completes(loom):
    write_settings(loom)
    result = run(loom, job(5, budget=10.0))
    result.assert_outcomes(completed=5)
    assert 0 < spent(loom, "b1") <= 10.0


class PauseAfter:
    """Pauses the batch once ``count`` items have completed in this run."""

    def __init__(self, count: int) -> None:
        self.count, self.done, self.control = count, 0, None

    @hookimpl
    def loom_batch_started(self, control):
        self.control = control

    @hookimpl
    def loom_item_finished(self, outcome):
        if outcome.state == "completed":
            self.done += 1
            if self.done == self.count:
                self.control.pause("paused by the test")


def test_resume_with_a_higher_budget_finishes_and_the_budget_sticks(loom):
    write_settings(loom)
    first = run(loom, job(30, budget=0.5, parallel=1))
    assert first.summary.reason.startswith("budget reached: ")
    done = first.counts["completed"]

    # A resume without a new budget stops again at once: nothing more fits.
    again = resume(loom, "b1")
    assert again.summary.reason.startswith("budget reached: ") and again.counts["completed"] == done

    # Raised to $5, but this run is paused by a plugin after five more items...
    raised = resume(loom, "b1", budget_usd=5.0, plugins=(PauseAfter(5),))
    assert raised.summary.reason == "paused by the test"
    assert done + 5 <= raised.counts["completed"] < 30  # the item in flight at the pause finishes
    assert 0.5 < spent(loom, "b1") <= 5.0
    # ... and a resume without the flag keeps the $5: the old $0.50 would stop it at once.
    final = resume(loom, "b1")
    final.assert_outcomes(completed=30)
    assert spent(loom, "b1") <= 5.0


def test_spend_stays_under_the_budget_with_real_http(loom, fake_provider):
    fake_provider.configure("m1", latency=0.01, output_tokens=40)
    loom.write("storyloom.yaml", f"""
        models:
          m1: {{provider: openai, model: m1, base_url: '{fake_provider.base_url("openai")}',
                api_key_env: {fake_provider.key_env("openai")}, price: {{input: 200, output: 800}}}}
        default_models: [m1]
        progress: []
        reports: []
    """)
    result = run(loom, job(40, budget=0.4, parallel=8, max_tokens=100, language="th"))
    assert result.summary.reason.startswith("budget reached: ") and result.summary.exit_code == 3
    assert 0 < result.counts["completed"] < 40
    # The fake reports usage the way OpenAI does; the store priced every attempt from it.
    usage = fake_provider.stats("m1")
    assert spent(loom, "b1") == pytest.approx((usage.prompt_tokens * 200 + usage.completion_tokens * 800) / 1e6)
    assert spent(loom, "b1") <= 0.4


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 25),
    budget=st.floats(0.0005, 0.6),
    input_price=st.floats(0.0, 500.0),
    output_price=st.floats(0.01, 2000.0),
    output_tokens=st.integers(1, 400),
    max_tokens=st.integers(1, 600),
    parallel=st.integers(1, 8),
    language=st.sampled_from(["en", "th"]),
    job_type=st.sampled_from(["qc_processing", "chapter_writing"]),
)
def test_spend_never_passes_the_budget(n, budget, input_price, output_price, output_tokens, max_tokens, parallel,
                                       language, job_type):
    with tempfile.TemporaryDirectory() as tmp:
        loom = Loom(Path(tmp))
        write_settings(loom, latency=1, output=output_tokens, input_price=input_price, output_price=output_price)
        try:
            result = run(loom, job(n, budget=budget, max_tokens=max_tokens, parallel=parallel, language=language,
                                  job_type=job_type))
        except UsageError as exc:
            # Some item's worst case does not fit: refused before anything is stored.
            event("refused: the budget cannot cover one item")
            assert "cannot cover one attempt at item" in str(exc)
            assert not (Path(tmp) / ".storyloom").exists()
            return
        total = spent(loom, "b1")
        assert result.counts["completed"] >= 1  # a budget that was accepted runs at least one item
        event(f"status: {result.summary.status}")  # --hypothesis-show-statistics: both outcomes occur
        assert total <= budget, (total, budget)
        assert result.counts["failed"] == 0
        if result.summary.status == "paused":
            assert result.summary.reason.startswith("budget reached: ") and result.summary.exit_code == 3
        else:
            assert result.summary.status == "completed"
            assert result.counts["completed"] + result.counts["skipped"] == n


def test_float_residue_never_holds_the_budget():
    async def main():
        budget = Budget(1.0, 0.0)
        for _ in range(3):
            assert await budget.reserve(0.1)
        for _ in range(3):
            budget.settle(0.1, 0.3)  # reserved: 0.1 + 0.1 + 0.1 - 0.1 - 0.1 - 0.1 = 2.8e-17, not 0
        with trio.fail_after(1):
            # Nothing is in flight, so this can never fit: it must say so, not wait.
            assert await budget.reserve(0.2) is False

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_budget_from_the_command_line_outlives_its_run(loom):
    write_settings(loom)
    first = run(loom, job(30, budget=None, parallel=1), budget_usd=0.5)  # `run --budget-usd 0.5`
    assert first.summary.reason.startswith("budget reached: ")
    done = first.counts["completed"]
    assert loom.read(lambda store: store.get_job("b1")).definition["budget_usd"] == 0.5
    # The hint's plain `resume` keeps the budget: it stops again at once, spending nothing more.
    again = resume(loom, "b1")
    assert again.summary.reason.startswith("budget reached: ") and again.counts["completed"] == done
    assert spent(loom, "b1") <= 0.5


def test_a_budget_given_to_a_worker_outlives_its_run(loom):
    write_settings(loom)
    loom.submit(job(30, budget=None, parallel=1))
    done = loom.work(budget_usd=0.5).summaries["b1"]
    assert done.reason.startswith("budget reached: ")
    assert loom.read(lambda store: store.get_job("b1")).definition["budget_usd"] == 0.5
    assert resume(loom, "b1").summary.reason.startswith("budget reached: ")
    assert spent(loom, "b1") <= 0.5


def test_worst_case_reservations_in_flight_do_not_pause_a_budget_spent_little(loom):
    # Each item reserves about 3 times what it costs, and 8 run at once: the
    # reservations fill the budget long before the spend does. Items wait for
    # those in flight to settle instead of pausing the job.
    write_settings(loom)
    one = run(loom, job(1, budget=None, job_id="probe"))
    per_item = spent(loom, "probe")
    result = run(loom, job(40, budget=round(20 * per_item, 6), parallel=8))
    assert result.summary.reason.startswith("budget reached: ")
    assert result.counts["completed"] >= 16  # 20 items' cost, less about one worst case held back
    assert spent(loom, "b1") <= 20 * per_item
    assert one.summary.status == "completed"


def test_a_budget_below_one_items_worst_case_is_refused_before_anything_is_stored(loom, capsys):
    from storyloom.cli import main

    write_settings(loom)  # one item reserves about $0.09 (200 output tokens at $400 per million)
    loom.write("job.yaml", job(3, budget=0.05))
    for command in (["validate", "job.yaml"], ["submit", "job.yaml"], ["run", "job.yaml", "-q"]):
        code = main([*command, "--state-dir", str(loom.state_dir)])
        err = capsys.readouterr().err
        assert code == 2, command
        assert "budget_usd $0.0500 cannot cover one attempt at item 'i0', whose worst case is $0.09" in err
        assert "Traceback" not in err
    assert not loom.state_dir.exists()
    # `resume --budget-usd` too: the stored job keeps its budget
    assert run(loom, job(30, budget=0.5)).summary.status == "paused"
    with pytest.raises(UsageError, match="cannot cover one attempt at item 'i"):
        resume(loom, "b1", budget_usd=0.01)
    assert loom.read(lambda store: store.get_job("b1")).definition["budget_usd"] == 0.5  # not stored

"""A part that fails (a sink factory refusing its options, a report renderer
or outputs hook that raises, a store that fails while the worker cleans up)
costs only itself: nothing is stored half-way, other jobs and outputs go
on, and the providers a worker built are closed on every path."""

from __future__ import annotations

import pytest
import trio

import storyloom
from storyloom import UsageError
from storyloom.api import render_report, run_job
from storyloom.provider import BaseProvider, Response
from storyloom.store import StoreUnavailable

SETTINGS = """
models:
  m: {provider: closing}
default_models: [m]
"""

JOB = """
job_id: parts
job_type: qc_processing
items:
  - {item_id: a}
  - {item_id: b}
"""

CLOSED: list[str] = []


class Closing(BaseProvider):
    """A provider that notes when it is closed."""

    async def complete(self, request):
        return Response(text="ok", input_tokens=1, output_tokens=1)

    async def aclose(self):
        CLOSED.append("closed")


class Parts:
    @storyloom.hookimpl
    def loom_register_providers(self, register):
        register("closing", Closing)

    @storyloom.hookimpl
    def loom_register_sinks(self, register):
        def refuse(config, plan):
            raise UsageError("sink 'refuses' needs an endpoint")

        register("refuses", refuse)

    @storyloom.hookimpl
    def loom_register_renderers(self, register):
        def broken(report):
            raise RuntimeError("renderer bug")

        register("broken", broken)


@pytest.fixture
def studio(loom, monkeypatch):
    monkeypatch.setenv("STORYLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")
    loom.write("storyloom.yaml", SETTINGS)
    CLOSED.clear()
    return loom


def test_run_with_a_refusing_sink_factory_stores_nothing(studio):
    with pytest.raises(UsageError, match="needs an endpoint"):
        studio.run(JOB, plugins=(Parts(),), progress=("refuses",))
    assert studio.stored_jobs() == []
    studio.run(JOB, plugins=(Parts(),)).assert_outcomes(completed=2)  # the job_id is free


def test_work_pauses_the_job_whose_sink_factory_refuses_and_goes_on(studio):
    studio.submit(JOB, plugins=(Parts(),))
    result = studio.work(plugins=(Parts(),), progress=("refuses",))  # does not raise
    assert "parts" not in result.summaries
    row = studio.read(lambda store: store.get_job("parts"))
    assert row.state == "paused" and "needs an endpoint" in row.reason


def test_a_raising_renderer_leaves_outputs_and_resume_working(studio, capsys):
    studio.write("storyloom.yaml", SETTINGS + "reports: [md, broken]\n")
    result = studio.run(JOB, plugins=(Parts(),))
    result.assert_outcomes(completed=2)
    outputs = studio.outputs("parts", plugins=(Parts(),))
    assert "report.md" in outputs and "renderer bug" in capsys.readouterr().err


def test_resume_with_a_raising_renderer_rebuilds_the_other_reports(studio):
    studio.run(JOB, plugins=(Parts(),)).assert_outcomes(completed=2)
    (studio.out_dir / "parts" / "report.md").unlink()
    studio.write("storyloom.yaml", SETTINGS + "reports: [md, broken]\n")
    result = studio.resume("parts", plugins=(Parts(),))  # does not raise
    assert result.summary.idle and result.summary.outputs_rebuilt == 1
    assert (studio.out_dir / "parts" / "report.md").exists()


def test_providers_are_closed_when_the_job_already_exists(studio):
    studio.run(JOB, plugins=(Parts(),)).assert_outcomes(completed=2)
    CLOSED.clear()
    with pytest.raises(UsageError, match="already exists"):
        studio.run(JOB, plugins=(Parts(),))
    assert CLOSED  # built for the run that never started, and closed


def test_providers_are_closed_when_there_is_nothing_to_resume(studio):
    studio.run(JOB, plugins=(Parts(),)).assert_outcomes(completed=2)
    studio.read(lambda store: store.set_job_state("parts", "paused", "held for the test"))
    CLOSED.clear()
    assert studio.resume("parts", plugins=(Parts(),)).summary.idle
    assert CLOSED


class ReleaseFails:
    """The real store, whose release breaks with an unexpected error."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    async def release(self, *args, **kwargs):
        raise RuntimeError("release broke")


def test_providers_are_closed_when_cleanup_meets_an_unexpected_error(studio):
    path = studio.write("job.yaml", JOB)

    async def main():
        async with studio.store(create=True) as store:
            await run_job(path, options=studio.options(), store=ReleaseFails(store), plugins=(Parts(),))

    with pytest.raises((RuntimeError, BaseExceptionGroup)) as info:
        trio.run(main)
    assert "release broke" in repr(info.value)
    assert CLOSED


class TwoFaults:
    """The real store; the job's start is refused (UsageError) while the
    promotion chore finds the store failed (StoreUnavailable), both at once."""

    def __init__(self, store):
        self._store = store
        self._gate = trio.Event()

    def __getattr__(self, name):
        return getattr(self._store, name)

    async def promote(self, *args, **kwargs):
        with trio.CancelScope(shield=True):  # fails even as the worker cancels it
            await self._gate.wait()
        raise StoreUnavailable("db", "disk full", "free some space")

    async def costs(self, job_id):
        self._gate.set()
        raise UsageError("refused at the start")


def test_a_store_failure_with_a_usage_error_arrives_as_the_store_failure(studio):
    path = studio.write("job.yaml", JOB)

    async def main():
        async with studio.store(create=True) as store:
            await run_job(path, options=studio.options(), store=TwoFaults(store), plugins=(Parts(),))

    with pytest.raises(StoreUnavailable) as info:
        trio.run(main)
    assert type(info.value) is StoreUnavailable  # one plain error: the store is the truth


def test_a_run_that_waits_for_another_process_still_reports_its_write_failures(studio):
    studio.submit(JOB, plugins=(Parts(),))
    # Another host's worker claims an item and is never heard from again.
    claimed = studio.read(lambda store: store.claim("parts", 1, 0.0, "elsewhere:1:abc", lease_s=0.5))
    assert len(claimed) == 1
    studio.out_dir.mkdir()
    (studio.out_dir / "parts").write_text("a file where the job's folder goes")
    result = studio.resume("parts", plugins=(Parts(),))
    # resume waited for the item held elsewhere (its lease ran out), then ran it too
    assert result.summary.status == "completed" and result.summary.counts["completed"] == 2
    assert result.summary.output_problems  # the failed result writes are not lost


def test_report_with_a_raising_renderer_is_a_clean_usage_error(studio, capsys):
    studio.run(JOB, plugins=(Parts(),)).assert_outcomes(completed=2)
    with pytest.raises(UsageError, match="renderer 'broken' failed"):
        trio.run(lambda: render_report("parts", "broken", options=studio.options(), plugins=(Parts(),)))
    assert "renderer bug" in capsys.readouterr().err  # the renderer's own error, for its author

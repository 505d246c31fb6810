"""Bad names given to a run are a clean usage error: exit 2, one line on
stderr, nothing stored; an error raised inside the worker's nurseries reaches
callers as a plain UsageError, not an ExceptionGroup."""

from __future__ import annotations

import pytest

import storyloom
from storyloom import UsageError
from storyloom.cli import main

SETTINGS = """
models:
  sim: {provider: simulated, latency_ms: 0, output_tokens: 20, seed: 1}
default_models: [sim]
"""

JOB = """
job_id: bad-names
job_type: qc_processing
items:
  - {item_id: a}
  - {item_id: b}
"""


@pytest.fixture
def studio(loom, monkeypatch):
    monkeypatch.setenv("STORYLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")
    loom.write("storyloom.yaml", SETTINGS)
    loom.write("job.yaml", JOB)
    return loom


def _one_error_line(capsys, text: str) -> None:
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()], err  # one line: no traceback, no group
    assert err.startswith(f"storyloom: error: {text}"), err


def test_run_with_an_unknown_progress_sink_exits_2_and_stores_nothing(studio, capsys):
    code = main(["run", "job.yaml", "--progress", "nosuch", "--state-dir", str(studio.state_dir)])
    assert code == 2
    _one_error_line(capsys, "unknown progress sink 'nosuch' (known: ")
    assert studio.stored_jobs() == []
    # The job_id is free: had the failed run stored the job, this would be "already exists".
    studio.run(JOB).assert_outcomes(completed=2)


def test_work_with_an_unknown_progress_sink_exits_2_and_pauses_nothing(studio, capsys):
    studio.submit(JOB)
    capsys.readouterr()
    code = main(["work", "--burst", "--progress", "nosuch", "--state-dir", str(studio.state_dir)])
    assert code == 2
    _one_error_line(capsys, "unknown progress sink 'nosuch'")
    assert {row.state for row in studio.items("bad-names").values()} == {"pending"}
    # Still queued, not paused "because this worker cannot run it".
    assert studio.work().summaries["bad-names"].status == "completed"


@storyloom.hookimpl
def register_refusing_sink(register):
    """A sink whose factory refuses its options once the batch is running."""

    def refuse(config, plan):
        raise UsageError("sink 'refuses' needs an endpoint")

    register("refuses", refuse)


class RefusingSink:
    loom_register_sinks = staticmethod(register_refusing_sink)


def test_a_usage_error_inside_the_worker_arrives_plain(studio):
    with pytest.raises(UsageError) as info:
        studio.run(JOB, plugins=(RefusingSink(),), progress=("refuses",))
    assert type(info.value) is UsageError  # not an ExceptionGroup around it
    assert str(info.value) == "sink 'refuses' needs an endpoint"


def test_a_usage_error_inside_the_worker_is_one_line_from_the_cli(studio, capsys, monkeypatch):
    import sys
    import types

    module = types.ModuleType("refusing_sink_plugin")
    module.loom_register_sinks = register_refusing_sink
    monkeypatch.setitem(sys.modules, "refusing_sink_plugin", module)
    code = main(["run", "job.yaml", "-p", "refusing_sink_plugin", "--progress", "refuses",
                 "--state-dir", str(studio.state_dir)])
    assert code == 2
    _one_error_line(capsys, "sink 'refuses' needs an endpoint")


def test_resume_with_an_unknown_progress_sink_leaves_the_job_as_it_was(studio, capsys):
    studio.submit(JOB)
    studio.read(lambda store: store.set_job_state("bad-names", "paused", "held for the test"))
    capsys.readouterr()
    code = main(["resume", "bad-names", "--progress", "nosuch", "--state-dir", str(studio.state_dir)])
    assert code == 2
    _one_error_line(capsys, "unknown progress sink 'nosuch'")
    row = studio.read(lambda store: store.get_job("bad-names"))
    assert (row.state, row.reason) == ("paused", "held for the test")  # not put back in the queue

"""storyloom.api as an embedding program uses it: the calls the CLI is a face over,
and the configure / unconfigure pairing of every call that builds its own config."""

from __future__ import annotations

import json

import pytest
import trio

import storyloom
from storyloom import hookimpl
from storyloom.store import StoreNotFound

SETTINGS = "models:\n  sim: {provider: simulated, latency_ms: 1, seed: 1}\ndefault_models: [sim]\n"


def job(job_id: str, n: int, extra: str = "") -> str:
    return f"job_id: {job_id}\njob_type: qc_processing\n{extra}items:\n" + "".join(
        f"  - {{item_id: {job_id}-{i}}}\n" for i in range(n))


class Lifecycle:
    """Records loom_configure / loom_unconfigure, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def loom_configure(self, config):
        self.calls.append("configure")

    @hookimpl
    def loom_unconfigure(self, config):
        self.calls.append("unconfigure")


class PauseAtFirst:
    @hookimpl
    def loom_batch_started(self, job, plan, control):
        control.pause("stopped by the test")


def test_resume_job_unconfigures_the_config_it_built(loom):
    loom.write("storyloom.yaml", SETTINGS)
    paused = loom.run(job("again", 3), plugins=(PauseAtFirst(),))
    assert paused.summary.status == "paused"
    lifecycle = Lifecycle()
    summary = trio.run(lambda: storyloom.resume_job("again", options=loom.options(), plugins=(lifecycle,)))
    assert summary.status == "completed"
    assert lifecycle.calls == ["configure", "unconfigure"]


@pytest.mark.parametrize("call", ["run_job", "submit_job", "work"])
def test_every_call_that_builds_a_config_closes_it(loom, call):
    loom.write("storyloom.yaml", SETTINGS)
    path = loom.write("j.yaml", job("j", 1))
    lifecycle = Lifecycle()
    target = getattr(storyloom, call)
    args = () if call == "work" else (path,)
    extra = {"burst": True} if call == "work" else {}
    trio.run(lambda: target(*args, options=loom.options(), plugins=(lifecycle,), **extra))
    assert lifecycle.calls == ["configure", "unconfigure"]


def test_status_queue_and_position_from_python(loom):
    loom.write("storyloom.yaml", SETTINGS)
    loom.submit(job("a", 2))
    loom.submit(job("b", 1, "priority: high\n"), name="b.yaml")
    options = loom.options()

    async def main():
        listing = await storyloom.job_status(options=options)
        assert [(j["job_id"], j["counts"]["pending"]) for j in listing["jobs"]] == [("a", 2), ("b", 1)]
        one = await storyloom.job_status("a", items=True, options=options)
        assert one["state"] == "pending" and [i["item_id"] for i in one["items"]] == ["a-0", "a-1"]
        queue = await storyloom.queue_overview(2, options=options)
        assert [row["item_id"] for row in queue["next"]] == ["b-0", "a-0"]
        assert {level["level"]: level["waiting"] for level in queue["levels"]}["normal"] == 2
        assert await storyloom.queue_position("a-1", options=options) == {"job_id": "a", "item_id": "a-1",
                                                                          "position": 3}
        await storyloom.pause_job("a", options=options)
        held = await storyloom.queue_overview(options=options)
        assert held["held"] == [{"job_id": "a", "state": "paused", "reason": "paused by an operator"}]
        assert await storyloom.cancel_job("a", options=options) == 2

    trio.run(main)


def test_render_report_from_python(loom):
    loom.write("storyloom.yaml", SETTINGS)
    loom.run(job("rep", 2))
    name, text = trio.run(lambda: storyloom.render_report("rep", "json", options=loom.options()))
    assert name == "report.json" and json.loads(text)["counts"]["completed"] == 2
    with pytest.raises(storyloom.UsageError, match="unknown report format 'pdf'"):
        trio.run(lambda: storyloom.render_report("rep", "pdf", options=loom.options()))


def test_reading_calls_never_create_a_store(loom):
    for call in (storyloom.job_status, storyloom.queue_overview):
        with pytest.raises(StoreNotFound):
            trio.run(lambda: call(options=loom.options()))
    assert not loom.state_dir.exists()


def test_work_reports_plain_lines_by_default(loom, capsys):
    """One live view cannot show many jobs: a worker's default progress is plain lines."""
    loom.write("storyloom.yaml", SETTINGS)
    loom.submit(job("w", 2))
    summaries = trio.run(lambda: storyloom.work(burst=True, options=loom.options(quiet=False)))
    assert [s.job_id for s in summaries] == ["w"] and summaries.interrupted is False
    assert "[w] 100% 2/2 done" in capsys.readouterr().err


def test_validate_job_and_describe_plugins(loom):
    path = loom.write("v.yaml", job("v", 2))
    assert len(storyloom.validate_job(path, options=loom.options()).items) == 2
    described = storyloom.describe_plugins(options=loom.options())
    assert described["registries"]["stores"] == {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}
    assert "loom_register_stores" in described["plugins"]["sqlite"]["hooks"]

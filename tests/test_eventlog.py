"""The eventlog sink: every event as one JSON line, valid against schemas/events.schema.json."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import trio
from jsonschema import Draft202012Validator

import storyloom
from sample_plugins import scripted
from storyloom.api import cancel_job, work
from storyloom.events import EVENT_KINDS
from storyloom.summary import EXIT_CODES

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "schemas" / "events.schema.json").read_text(encoding="utf-8"))

SETTINGS = """
models:
  s1: {provider: scripted, latency: 0.005, script: {it-1: [TEMPORARY_ERROR, ok], it-2: [INVALID_INPUT]}}
default_models: [s1]
retry_config: {max_retries: 2, retry_delay: {initial: 0.01s, max: 0.02s}}
progress: [eventlog]
"""


class Messenger:
    """Pauses after the fourth finished item, with a notify first (and data that is not JSON)."""

    def __init__(self):
        self.seen = 0

    @storyloom.hookimpl
    def loom_batch_started(self, control):
        self.control = control

    @storyloom.hookimpl
    def loom_item_finished(self, outcome):
        self.seen += outcome.state != "retrying"
        if self.seen == 4:
            self.control.notify("สี่ items done", when=Path("x"))
            self.control.pause("paused by the test")


@pytest.fixture(autouse=True)
def _reset():
    scripted.reset()


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_line_is_valid_and_a_resume_appends(loom):
    loom.write("storyloom.yaml", SETTINGS)
    items = "".join(f"  - {{item_id: it-{i}, project_id: rain, chapter_num: {i + 1}}}\n" for i in range(8))
    job = f"job_id: ev\njob_type: qc_processing\nbudget_usd: 2.5\nconfig: {{max_parallel: 1}}\nitems:\n{items}"
    first = loom.run(job, plugins=(scripted, Messenger()))
    assert first.summary.status == "paused"
    path = loom.out_dir / "ev" / "events.jsonl"
    lines_after_first = len(path.read_text(encoding="utf-8").splitlines())
    loom.resume("ev", plugins=(scripted,))

    events = read(path)
    assert len(events) > lines_after_first  # appended, not overwritten
    validator = Draft202012Validator(SCHEMA)
    for event in events:
        errors = [e.message for e in validator.iter_errors(event)]
        assert not errors, (event, errors)
    kinds = [e["kind"] for e in events]
    assert set(kinds) == set(EVENT_KINDS) - {"escalate"}
    # Two runs, each opened by batch_started and closed by batch_finished.
    assert [k for k in kinds if k.startswith("batch_")] == ["batch_started", "batch_finished"] * 2
    assert kinds[-1] == "batch_finished" and kinds[lines_after_first - 1] == "batch_finished"
    first_end = events[lines_after_first - 1]["data"]
    assert first_end["status"] == "paused" and first_end["reason"] == "paused by the test"
    assert events[0]["data"]["budget_usd"] == 2.5
    # Each item's outcomes are all there: a retry, a failure, and the rest completed.
    finished = [(e["item_id"], e["data"]["state"]) for e in events if e["kind"] == "item_finished"]
    assert ("it-1", "retrying") in finished and ("it-2", "failed") in finished
    assert sorted(i for i, s in finished if s == "completed") == [f"it-{i}" for i in (0, 1, 3, 4, 5, 6, 7)]
    started = [e for e in events if e["kind"] == "item_started"]
    assert started[0]["data"] == {"attempt": 1, "model": "s1", "project_id": "rain", "chapter_num": 1}
    note = next(e for e in events if e["kind"] == "notify")
    assert note["data"]["message"] == "สี่ items done" and note["data"]["when"] == "x"  # made text, not dropped
    assert "สี่" in path.read_text(encoding="utf-8")  # Thai as itself, not \\u escapes


def test_schema_and_kernel_agree_on_the_event_kinds():
    assert SCHEMA["properties"]["kind"]["enum"] == list(EVENT_KINDS)


def test_a_cancelled_job_logs_a_valid_batch_finished(loom):
    """Cancelled from another connection, as ``storyloom cancel`` does, while items run."""
    loom.write("storyloom.yaml", """
        models:
          s1: {provider: scripted, latency: 30}
        default_models: [s1]
        progress: [eventlog]
    """)
    items = "".join(f"  - {{item_id: it-{i}}}\n" for i in range(4))
    loom.submit(f"job_id: gone\njob_type: qc_processing\nconfig: {{max_parallel: 2}}\nitems:\n{items}",
                plugins=(scripted,))

    async def main():
        with trio.fail_after(10):  # the 30 s attempts are stopped, not waited for
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(work, burst=True, options=loom.options(), plugins=(scripted,)))
                while scripted.STATS["in_flight"] < 2:
                    await trio.sleep(0.01)
                async with loom.store() as store:
                    await cancel_job("gone", "the editor dropped this book", store=store)

    trio.run(main)
    events = read(loom.out_dir / "gone" / "events.jsonl")
    end = events[-1]
    assert end["kind"] == "batch_finished" and end["data"]["status"] == "cancelled", end
    validator = Draft202012Validator(SCHEMA)
    for event in events:
        errors = [e.message for e in validator.iter_errors(event)]
        assert not errors, (event, errors)


def test_schema_and_summary_agree_on_how_a_run_ends():
    assert SCHEMA["$defs"]["batchFinished"]["properties"]["status"]["enum"] == list(EXIT_CODES)

"""Pipelines end to end: then: stages, follow-ups committed with their
completion, default chaining, dependencies, taking over, gates, artifacts
and project context, run by the real kernel on a real SQLite store.

The job types are ``tests/sample_plugins/pipeline.py`` (a small book:
plan -> write -> qc -> export); the provider is the scripted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

import storyloom
from sample_plugins import pipeline, scripted
from storyloom import api
from storyloom.store.protocol import GateRow

SETTINGS = (
    "models:\n"
    "  s1: {provider: scripted, latency: 0.002, script: {}}\n"
    "  s2: {provider: scripted, latency: 0.002, script: {}}\n"
    "default_models: [s1]\n"
    "retry_config: {max_retries: 1, retry_delay: {initial: 0.01s, multiplier: 1, max: 0.01s}}\n"
)
PLUGINS = (scripted, pipeline)
THEN = "then: [{job_type: pipe_write}, {job_type: pipe_qc, models: [s2]}, {job_type: pipe_export}]\n"


def book_job(*books: str, job_id: str = "bk", extra: str = "", fields: str = "chapters: 3") -> str:
    items = "".join(f"  - {{item_id: {b}-plan, project_id: {b}, {fields}}}\n" for b in books)
    return f"job_id: {job_id}\njob_type: pipe_plan\n{THEN}{extra}items:\n{items}"


@pytest.fixture(autouse=True)
def _reset():
    scripted.reset()
    pipeline.reset()


def started_order() -> list[str]:
    """Item ids in the order their requests reached the provider (first attempts)."""
    return [item_id for item_id, attempt, _model, _t in scripted.STATS["calls"] if attempt == 1]


def test_a_pipeline_runs_every_stage_in_dependency_order(loom):
    loom.write("storyloom.yaml", SETTINGS)
    result = loom.run(book_job("b1", "b2"), plugins=PLUGINS)
    result.assert_outcomes(completed=2 + 2 * (3 + 3 + 1))
    assert result.summary.status == "completed"
    order = started_order()
    for book in ("b1", "b2"):
        chain = [f"{book}-plan", f"{book}-ch1", f"{book}-ch1-qc", f"{book}-ch2", f"{book}-ch2-qc",
                 f"{book}-ch3", f"{book}-ch3-qc", f"{book}-export"]
        positions = [order.index(item_id) for item_id in chain]
        assert positions == sorted(positions), (book, order)
    # each stage ran on its own models: QC on s2, the rest on s1
    models = {item_id: model for item_id, _a, model, _t in scripted.STATS["calls"]}
    assert {models[i] for i in models if i.endswith("-qc")} == {"s2"}
    assert {models[i] for i in models if not i.endswith("-qc")} == {"s1"}
    # items carry their stage, stored
    assert result.items["b1-ch2"].definition["job_type"] == "pipe_write"
    assert result.items["b1-ch2-qc"].definition["job_type"] == "pipe_qc"
    assert "job_type" not in result.items["b1-plan"].definition


def test_artifacts_are_stored_with_provenance_and_read_as_context(loom):
    loom.write("storyloom.yaml", SETTINGS)
    loom.run(book_job("b1"), plugins=PLUGINS)
    artifacts = loom.read(lambda store: store.artifacts("b1"))
    assert [(a.kind, a.key, a.version) for a in artifacts if a.kind != "qc"] == [
        ("outline", "", 1), ("chapter", "1", 1), ("chapter", "2", 1), ("chapter", "3", 1)]
    outline = artifacts[0]
    assert (outline.content, outline.job_id, outline.item_id, outline.attempt, outline.model) == (
        {"chapters": 3}, "bk", "b1-plan", 1, "s1")
    assert outline.created_at > 0
    assert artifacts[1].content == "text for b1-ch1"
    # pipe_write reads its project: chapter 2 saw the outline, chapter 1 and its QC
    seen = {item_id: context for job_type, item_id, context in pipeline.LOG if job_type == "pipe_write"}
    assert seen["b1-ch1"] == [("outline", "", 1)]
    assert seen["b1-ch2"] == [("outline", "", 1), ("chapter", "1", 1), ("qc", "1", 1)]
    # a job type that does not read its project gets no context
    assert all(context is None for job_type, _i, context in pipeline.LOG if job_type != "pipe_write")


def test_a_failed_qc_makes_a_rewrite_that_takes_over_its_waiters(loom_each_store):
    loom = loom_each_store  # on SQLite, then on PostgreSQL
    loom.write("storyloom.yaml", SETTINGS)
    result = loom.run(book_job("b1", fields="chapters: 3, fail_qc: [2]"), plugins=PLUGINS)
    assert result.summary.status == "completed"
    order = started_order()
    # ch3 and export waited on ch2-qc; after it failed they waited on the rewrite's QC
    assert order.index("b1-ch2-r1") > order.index("b1-ch2-qc")
    assert order.index("b1-ch2-r1-qc") > order.index("b1-ch2-r1")
    assert order.index("b1-ch3") > order.index("b1-ch2-r1-qc")
    assert order.index("b1-export") > order.index("b1-ch3-qc")
    chapters = loom.read(lambda store: store.artifacts("b1", kinds=["chapter"]))
    assert [(a.key, a.version, a.item_id) for a in chapters] == [
        ("1", 1, "b1-ch1"), ("2", 1, "b1-ch2"), ("2", 2, "b1-ch2-r1"), ("3", 1, "b1-ch3")]
    # the rewrite's QC was made once, by the failed QC (its default chaining repeated the id: ignored)
    assert list(result.items).count("b1-ch2-r1-qc") == 1
    assert result.items["b1-ch2-r1-qc"].definition["takes_over"] == "b1-ch2-qc"


def test_a_failure_skips_every_item_waiting_on_it(loom):
    script = {"b1-ch2": ["INVALID_INPUT"]}
    loom.write("storyloom.yaml", SETTINGS.replace("script: {}", f"script: {script}", 1))
    result = loom.run(book_job("b1", "b2"), plugins=PLUGINS)
    assert result.summary.status == "failed"
    assert "2 item(s) are blocked behind failed items" in result.summary.reason
    assert "--retry-failed" in result.summary.reason
    items = result.items
    assert (items["b1-ch2"].state, items["b1-ch2"].error_kind) == ("failed", "INVALID_INPUT")
    # ch2's QC was never made (only a completion chains), so what waits on it stays blocked
    assert "b1-ch2-qc" not in items
    assert (items["b1-ch3"].state, items["b1-export"].state) == ("pending", "pending")
    assert "b1-ch3" not in started_order()
    assert all(row.state == "completed" for item_id, row in items.items() if item_id.startswith("b2-"))
    # the report lists a later stage's failure with its stage and the fields its job type shows
    _name, text = trio.run(lambda: api.render_report("bk", "json", options=loom.options(), plugins=PLUGINS))
    failed = [{k: f[k] for k in ("item_id", "project_id", "job_type", "stage", "fields", "error_kind")}
              for f in json.loads(text)["failed_items"]]
    assert failed == [{"item_id": "b1-ch2", "project_id": "b1", "job_type": "pipe_write", "stage": 1,
                       "fields": {"chapter": 2}, "error_kind": "INVALID_INPUT"}]
    _name, text = trio.run(lambda: api.render_report("bk", "md", options=loom.options(), plugins=PLUGINS))
    assert "- b1-ch2 (pipe_write, chapter 2): INVALID_INPUT: " in text


def test_a_failed_dependency_skips_what_waits_on_it(loom):
    """An item that exists and fails: its waiters (and theirs) are skipped, naming it."""
    script = {"b1-ch1-qc": ["INVALID_INPUT"]}
    loom.write("storyloom.yaml", SETTINGS.replace("script: {}", f"script: {script}", 2))
    result = loom.run(book_job("b1"), plugins=PLUGINS)
    assert result.summary.status == "failed"
    items = result.items
    assert items["b1-ch1-qc"].state == "failed"
    for blocked in ("b1-ch2", "b1-export"):
        assert (items[blocked].state, items[blocked].error) == ("skipped", "blocked: b1-ch1-qc failed")
    assert started_order() == ["b1-plan", "b1-ch1", "b1-ch1-qc"]


def test_retry_failed_brings_a_blocked_pipeline_back(loom):
    script = {"b1-ch2": ["INVALID_INPUT"]}
    loom.write("storyloom.yaml", SETTINGS.replace("script: {}", f"script: {script}", 1))
    loom.run(book_job("b1"), plugins=PLUGINS)
    summary = trio.run(lambda: api.resume_job("bk", options=loom.options(), plugins=PLUGINS, retry_failed=True))
    assert summary.status == "completed", summary.reason
    items = loom.items("bk")
    assert all(row.state == "completed" for row in items.values())
    assert len(items) == 1 + 3 + 3 + 1


def test_a_gate_holds_its_items_until_opened_and_the_job_ends_paused(loom_each_store):
    loom = loom_each_store  # on SQLite, then on PostgreSQL
    loom.write("storyloom.yaml", SETTINGS)
    result = loom.run(book_job("b1", fields="chapters: 2, gate: 'b1:outline'"), plugins=PLUGINS)
    assert result.summary.status == "paused"
    assert "b1:outline" in result.summary.reason and "resume" in result.summary.reason
    assert started_order() == ["b1-plan"]
    assert loom.read(lambda store: store.gates()) == [GateRow("b1:outline", None, 2)]
    assert loom.read(lambda store: store.open_gate("b1:outline")) == 2
    result = loom.resume("bk", plugins=PLUGINS)
    assert result.summary.status == "completed"
    assert started_order()[1:3] == ["b1-ch1", "b1-ch1-qc"]


def test_a_job_type_naming_a_stage_the_job_lacks_fails_the_item_clearly(loom):
    loom.write("storyloom.yaml", SETTINGS)
    job = book_job("b1").replace(THEN, "then: [{job_type: pipe_write}]\n")
    result = loom.run(job, plugins=PLUGINS)
    plan = result.items["b1-plan"]
    assert plan.state == "failed" and plan.error_kind == "INTERNAL_ERROR"
    assert "job type 'pipe_export' is not a stage of job 'bk'" in plan.error
    assert "then:" in plan.error
    assert list(result.items) == ["b1-plan"]  # nothing of it was stored
    assert loom.read(lambda store: store.artifacts("b1")) == []


def test_stage_limits_are_their_own(loom):
    loom.write("storyloom.yaml", SETTINGS.replace("latency: 0.002", "latency: 0.03"))
    job = book_job(*[f"b{i}" for i in range(6)], fields="chapters: 1").replace(
        "{job_type: pipe_write}", "{job_type: pipe_write, config: {max_parallel: 2}}")
    result = loom.run(job, plugins=PLUGINS)
    assert result.summary.status == "completed"
    calls = scripted.STATS["calls"]
    # at no moment were more than two chapters being written
    spans = {}
    for item_id, _a, _m, t in calls:
        spans.setdefault(item_id, t)
    writes = sorted(t for i, t in spans.items() if i.endswith("-ch1"))
    assert len(writes) == 6
    assert all(later - earlier >= 0.029 for earlier, later in zip(writes, writes[2:]))


def test_work_serves_every_stage_of_queued_pipelines(loom):
    loom.write("storyloom.yaml", SETTINGS)
    loom.submit(book_job("b1", job_id="w1"), plugins=PLUGINS)
    loom.submit(book_job("b2", job_id="w2", fields="chapters: 2"), plugins=PLUGINS, name="job2.yaml")
    result = loom.work(plugins=PLUGINS)
    assert {job_id: s.status for job_id, s in result.summaries.items()} == {"w1": "completed", "w2": "completed"}
    assert loom.read(lambda store: store.counts("w2"))["completed"] == 1 + 2 + 2 + 1


# -- crash safety


class RecordingStore:
    """The SQLite store, with every record() call checked from outside: a
    follow-up does not exist before the call that completes its maker, and
    exists (with the maker completed) once that one call returns."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.location = inner.location
        self.inserted_by_record: list[tuple[str, tuple[str, ...]]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def record(self, records, owner, started=()):
        makers = [r for r in records if r.follow_ups]
        for r in makers:
            existing = {row.item_id for row in await self.inner.items(r.job_id)}
            new = tuple(f.item_id for f in r.follow_ups if f.item_id not in existing)
            self.inserted_by_record.append((r.item_id, new))
        applied = await self.inner.record(records, owner, started)
        for r, ok in zip(records, applied):
            if r.follow_ups:
                rows = {row.item_id: row.state for row in await self.inner.items(r.job_id)}
                assert ok and rows[r.item_id] == "completed"
                assert all(f.item_id in rows for f in r.follow_ups)
        return applied


def test_follow_ups_are_written_by_the_call_that_completes_their_maker(loom):
    from storyloom.plugins.stores.sqlite import open_sqlite

    stores: list[RecordingStore] = []

    class Plugin:
        @storyloom.hookimpl
        def loom_register_stores(self, register):
            async def opener(url, *, state_dir, settings, create):
                store = RecordingStore(await open_sqlite("sqlite", state_dir=state_dir, settings=settings,
                                                         create=create))
                stores.append(store)
                return store

            register("recording", opener)

    loom.write("storyloom.yaml", SETTINGS)
    result = loom.run(book_job("b1", fields="chapters: 2, fail_qc: [1]"), plugins=(*PLUGINS, Plugin()),
                      store="recording")
    assert result.summary.status == "completed"
    inserted = dict(s for store in stores for s in store.inserted_by_record)
    # every item but the plan arrived as a follow-up, in the record() of the item that made it
    assert inserted["b1-plan"] == ("b1-ch1", "b1-ch2", "b1-export")
    assert inserted["b1-ch1"] == ("b1-ch1-qc",)
    assert inserted["b1-ch1-qc"] == ("b1-ch1-r1", "b1-ch1-r1-qc")
    assert inserted["b1-ch1-r1"] == ()  # its chained QC already existed: made once
    made = {item_id for new in inserted.values() for item_id in new}
    assert made == set(result.items) - {"b1-plan"}


PIPELINE_SETTINGS = """\
plugins: [sample_plugins.scripted, sample_plugins.pipeline]
models:
  s1: {provider: scripted, latency: 0.05, script: {}}
  s2: {provider: scripted, latency: 0.05, script: {}}
default_models: [s1]
queue: {lease: 2s}  # the killed run's items are back within 2s + 2s/3, not 30s + 10s
"""


@pytest.mark.slow
def test_sigkill_mid_pipeline_then_resume_loses_and_repeats_nothing(tmp_path):
    from test_cli import completed_attempts, popen, read_store, wait_for_completed

    (tmp_path / "storyloom.yaml").write_text(PIPELINE_SETTINGS)
    (tmp_path / "book.yaml").write_text(book_job("b1", "b2", "b3", "b4", job_id="kill", fields="chapters: 4")
                                        + "config: {max_parallel: 4}\n")
    env_path = str(Path(__file__).parent)
    proc = popen_with_path(popen, env_path, "run", "book.yaml", "-q", cwd=tmp_path)
    try:
        wait_for_completed(tmp_path, "kill", 14, timeout=60)
    finally:
        proc.kill()  # SIGKILL: no cleanup at all
        proc.wait(timeout=10)
    before = read_store(tmp_path, lambda store: store.counts("kill"))
    assert before["completed"] < 40  # the kill really came mid-pipeline
    out = cli_with_path(env_path, "resume", "kill", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    per_item = read_store(tmp_path, completed_attempts)
    assert len(per_item) == 4 * (1 + 4 + 4 + 1) and set(per_item.values()) == {1}
    for book in ("b1", "b2", "b3", "b4"):
        artifacts = read_store(tmp_path, lambda store: store.artifacts(book))
        keys = [(a.kind, a.key) for a in artifacts]
        assert len(keys) == len(set(keys)) == 1 + 4 + 4  # outline, chapters, QC reports: once each
        assert {a.version for a in artifacts} == {1}


def popen_with_path(popen, path, *args, cwd):
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = path + (os.pathsep + old if old else "")
    try:
        return popen(*args, cwd=cwd)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def cli_with_path(path, *args, cwd):
    from test_cli import cli

    old = os.environ.get("PYTHONPATH", "")
    return cli(*args, cwd=cwd, env={"PYTHONPATH": path + (os.pathsep + old if old else "")}, timeout=180)


# -- loading then:


def load(loom, job_yaml: str):
    from storyloom.config import make_config

    loom.write("storyloom.yaml", SETTINGS)
    path = loom.write("job.yaml", job_yaml)
    config = make_config(loom.options(), job_file=path, extra_plugins=PLUGINS)
    with config:
        job = config.load_job(path)
        return job, config.plan(job)


def test_then_stages_load_with_their_own_plans(loom):
    job, plan = load(loom, book_job("b1", extra="config: {max_parallel: 3, max_retries: 0}\n").replace(
        "{job_type: pipe_qc, models: [s2]}",
        "{job_type: pipe_qc, models: [s2], routing: {strategy: least_loaded}, config: {max_parallel: 5, "
        "timeout_per_item: 2s}}"))
    assert job.stage_types == ("pipe_plan", "pipe_write", "pipe_qc", "pipe_export")
    qc = plan.stage("pipe_qc")
    assert (qc.stage_type, qc.models, qc.routing["strategy"], qc.max_parallel, qc.timeout_per_item,
            qc.max_retries) == ("pipe_qc", ("s2",), "least_loaded", 5, 2.0, 0)
    write = plan.stage("pipe_write")  # the job's config and models, the job type's timeout
    assert (write.models, write.max_parallel, write.timeout_per_item) == (("s1",), 3, 30.0)
    assert plan.stage(None) is plan and plan.stage("pipe_plan") is plan
    # stored and read back, as resume does
    from storyloom.job import job_from_dict, job_to_dict

    again = job_from_dict(job_to_dict(job), job.items)
    assert again.stages == job.stages and again == job


@pytest.mark.parametrize(("then", "where", "message"), [
    ("[{job_type: pipe_write}, {job_type: nope}]", "job.yaml:3:43: at then[1].job_type",
     "unknown job_type 'nope'"),
    ("[{job_type: pipe_write}, {job_type: pipe_write}]", "job.yaml:3:43: at then[1].job_type",
     "job type 'pipe_write' is already a stage of this job (at then[0].job_type)"),
    ("[{job_type: pipe_plan}]", "job.yaml:3:19: at then[0].job_type", "already a stage of this job (at job_type)"),
    ("[{job_type: pipe_write, models: [nope]}]", "job.yaml:3:40: at then[0].models[0]", "unknown model 'nope'"),
    ("[{job_type: pipe_write, colour: red}]", "job.yaml:3:31: at then[0].colour", "unknown key 'colour'"),
    ("{job_type: pipe_write}", "job.yaml:3:7: at then", "expected a list"),
])
def test_a_bad_then_is_an_error_at_its_place(loom, then, where, message):
    from storyloom.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load(loom, book_job("b1").replace(THEN, f"then: {then}\n"))
    text = str(info.value).replace(f"{loom.path}/", "")
    assert text.startswith(where) and message in text, text


def test_items_keep_their_pipeline_keys_when_stored():
    from storyloom.job import Item, item_from_dict, item_to_dict

    item = Item("c2", project_id="p", job_type="pipe_write", after=("c1", "c1-qc"), takes_over="c1-qc",
                gate="p:outline", fields={"chapter": 2})
    data = item_to_dict(item)
    assert item_from_dict(data) == item
    assert {"job_type", "after", "takes_over", "gate"} <= set(data)
    plain = item_to_dict(Item("a"))
    assert set(plain) == {"item_id", "project_id", "status", "priority", "deadline", "model", "fields"}
    assert item_from_dict(plain).fields == {}
    assert Item("a", context=object()) == Item("a")  # context is not compared


def test_progress_events_count_the_follow_ups_and_stay_valid(loom):
    import json

    from jsonschema import Draft202012Validator

    from storyloom.plugins.support.tracker import ProgressTracker
    from storyloom.events import Event

    loom.write("storyloom.yaml", SETTINGS + "progress: [eventlog]\n")
    loom.run(book_job("b1"), plugins=PLUGINS)
    lines = (loom.out_dir / "bk" / "events.jsonl").read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    schema = json.loads((Path(__file__).parent.parent / "schemas" / "events.schema.json").read_text())
    validator = Draft202012Validator(schema)
    assert all(validator.is_valid(event) for event in events)
    finished = {e["item_id"]: e["data"] for e in events if e["kind"] == "item_finished"}
    assert finished["b1-plan"]["follow_ups"] == 4  # three chapters and the export
    assert finished["b1-ch1"]["follow_ups"] == 1  # its QC, chained
    assert "follow_ups" not in finished["b1-export"]
    tracker = ProgressTracker()
    for e in events:
        tracker.apply(Event(e["kind"], e["job_id"], e.get("item_id"), data=e["data"], time=e["time"]))
    assert (tracker.completed, tracker.total) == (8, 8)
    tracker = ProgressTracker()  # without the final counts, the follow-ups alone
    for e in events:
        if e["kind"] != "batch_finished":
            tracker.apply(Event(e["kind"], e["job_id"], e.get("item_id"), data=e["data"], time=e["time"]))
    assert (tracker.completed, tracker.total) == (8, 8)


# -- storyloom.pipeline.completion and ProjectContext, directly


def outcome_with(result):
    from storyloom.contracts import Outcome

    return Outcome(state="completed", attempt=1, model="s1", elapsed=0.1, result=result)


def test_completion_turns_bad_follow_ups_and_artifacts_into_a_failure():
    from storyloom.artifacts import Artifact
    from storyloom.contracts import Result
    from storyloom.job import Item, Job, Stage
    from storyloom.pipeline import completion
    from storyloom.pluginmanager import make_plugin_manager
    from storyloom.registry import collect

    pm = make_plugin_manager()
    pm.register(pipeline)
    registries = collect(pm)
    job = Job("j", "pipe_plan", (), stages=(Stage("pipe_write"),))
    done = Item("a", project_id="p")
    cases = {
        "not a stage": (Item("x", job_type="pipe_qc"),), "given twice": (Item("x"), Item("x")),
        "expected a safe name": (Item("../x"),), "waits on itself": (Item("x", after=("x",)),),
        "status must be pending": (Item("x", status="skipped"),), "must be a storyloom.job.Item": ({"item_id": "x"},),
    }
    for message, follow_ups in cases.items():
        out, new, arts = completion(registries, job, done, outcome_with(Result("t", "a.md", follow_ups=follow_ups)))
        assert (out.state, out.error_kind, new, arts) == ("failed", "INTERNAL_ERROR", (), ()), message
        assert message in out.error, (message, out.error)
        assert out.result is None
    bad_artifacts = {
        "artifact k/: content is not JSON": Artifact("p", "k", "", {1, 2}),
        "artifact k/1: content is not JSON (Out of range float": Artifact("p", "k", "1", float("nan")),
        "artifact '': kind must be a non-empty string": Artifact("p", "", "", "v"),
        "artifact 'k': key must be a string, not 3": Artifact("p", "k", 3, "v"),
        "an artifact must be a storyloom.artifacts.Artifact, not str": "text",
    }
    for message, bad in bad_artifacts.items():
        out, _new, _arts = completion(registries, job, done, outcome_with(Result("t", "a.md", artifacts=(bad,))))
        assert out.state == "failed" and out.error.startswith(message), (message, out.error)
    # good ones: the job's level and deadline, the stage kept, chaining by default
    out, new, arts = completion(registries, job, done, outcome_with(Result("t", "a.md")))
    assert out.state == "completed" and arts == ()
    assert [(n.item_id, n.job_type, n.level, n.definition["fields"]) for n in new] == [
        ("a-pipe_write", "pipe_write", 2, {"source_item": "a"})]
    last = Item("w", job_type="pipe_write")
    assert completion(registries, job, last, outcome_with(Result("t", "w.md")))[1] == ()  # the last stage


def test_project_context_finds_the_newest_versions():
    from storyloom.artifacts import Artifact, ProjectContext

    context = ProjectContext(None, [Artifact("p", "chapter", "1", "a", version=1),
                                    Artifact("p", "chapter", "2", "b", version=1),
                                    Artifact("p", "chapter", "1", "c", version=2),
                                    Artifact("p", "outline", "", "o", version=1)])
    assert context.latest("chapter", "1").content == "c"
    assert context.latest("chapter").content == "c"  # the last stored
    assert context.latest("summary") is None
    assert {k: a.content for k, a in context.newest("chapter").items()} == {"1": "c", "2": "b"}


class PauseAfter:
    """Pauses the job once ``n`` items have finished."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    @storyloom.hookimpl
    def loom_batch_started(self, control):
        self.control = control

    @storyloom.hookimpl
    def loom_item_finished(self, outcome):
        self.seen += outcome.state != "retrying"
        if self.seen == self.n:
            self.control.pause("paused by the test")


def test_pause_and_resume_cover_every_stage(loom):
    loom.write("storyloom.yaml", SETTINGS)
    first = loom.run(book_job("b1", "b2") + "config: {max_parallel: 1}\n", plugins=(*PLUGINS, PauseAfter(4)))
    assert first.summary.status == "paused" and first.summary.reason == "paused by the test"
    done_first = {i for i, row in first.items.items() if row.state == "completed"}
    assert 4 <= len(done_first) < 16
    assert any(row.definition.get("job_type") for i, row in first.items.items() if i in done_first)
    again = loom.resume("bk", plugins=PLUGINS)
    assert again.summary.status == "completed"
    assert len(again.items) == 16 and all(row.state == "completed" for row in again.items.values())
    # nothing ran twice
    firsts = [item_id for item_id, attempt, _m, _t in scripted.STATS["calls"] if attempt == 1]
    assert len(firsts) == len(set(firsts)) == 16

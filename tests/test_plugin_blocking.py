"""Every ``-p no:NAME`` leaves a working run.

For each bundled plugin that is not essential, a small job suited to its
absence runs to its end with that plugin blocked, and every plugin still
registered goes on producing what it produces: item files (outputs),
reports (reports), the event log (eventlog), progress lines (terminal, or
plain when terminal is blocked), webhook POSTs (webhook).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trio

from storyloom.api import run_job
from storyloom.pluginmanager import DEFAULT_PLUGINS, ESSENTIAL_PLUGINS
from storyloom.testing import HookRecorder, RunResult

BLOCKABLE = sorted(set(DEFAULT_PLUGINS) - set(ESSENTIAL_PLUGINS))

CHAPTERS = """
job_id: {job_id}
job_type: chapter_writing
language: th
models: [{model}]
config: {{max_parallel: 2, max_retries: 0}}
items:
  - {{project_id: rain, chapters: 1-3, genre: romantic-comedy, title: ฝนตกที่เชียงใหม่}}
"""
PROMPTS = """
job_id: {job_id}
job_type: prompts
models: [{model}]
items:
  - {{item_id: b1, prompt: "A blurb for {{{{ title }}}}.", vars: {{title: Rain}}}}
  - {{item_id: b2, messages: [{{role: user, content: Say hello.}}]}}
"""


@dataclass
class Case:
    """The job to run with one plugin blocked, and the files its items write."""

    job: str = CHAPTERS
    model: str = "sim"
    outputs: tuple[str, ...] = ("rain-ch1.md", "rain-ch2.md", "rain-ch3.md")
    status: str = "completed"
    counts: dict[str, int] = field(default_factory=lambda: {"completed": 3})


CASES = {
    # No chapter_writing and friends: the prompts job type still runs.
    "jobtypes": Case(job=PROMPTS, outputs=("b1.txt", "b2.txt"), counts={"completed": 2}),
    # No prompts job type: chapter_writing (the default case) still runs.
    # No simulated provider: an HTTP provider against the fake server.
    "simulated": Case(model="fake"),
    # No failure policy: a job whose every item fails is not paused, it ends failed. Eight
    # items, so that with the policy on the pause after two finds items still waiting.
    "failure_policy": Case(job=CHAPTERS.replace("chapters: 1-3", "chapters: 1-8"), model="broken", outputs=(),
                           status="failed", counts={"failed": 8}),
}

#: The progress sink each sink-registering plugin contributes (terminal and plain
#: print the same lines off a terminal, so only one of them is asked for).
SINKS = {"terminal": "terminal", "eventlog": "eventlog", "webhook": "webhook"}


class Receiver:
    """A local webhook endpoint that records the JSON bodies it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the stdlib's name
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def settings(blocked: str, fake_provider, receiver: Receiver) -> str:
    models = {"sim": "{provider: simulated, latency_ms: 1, seed: 1}",
              "broken": "{provider: simulated, latency_ms: 1, errors: {INVALID_INPUT: 1.0}}"}
    if blocked == "simulated":
        models = {"fake": f"{{provider: openai, model: m1, base_url: '{fake_provider.base_url('openai')}', "
                          f"api_key_env: {fake_provider.key_env('openai')}}}"}
    lines = ["models:", *(f"  {name}: {spec}" for name, spec in models.items()),
             f"webhooks:\n  - url: {receiver.url}", "failure_policy: {min_items: 2}"]
    return "\n".join(lines) + "\n"


def run_blocked(loom, blocked: str, case: Case, **overrides) -> RunResult:
    """``loom.run`` with ``Options.plugins=("no:NAME",)`` (``loom.run``'s own
    ``plugins`` are plugin objects, so the options are built here)."""
    job_id = f"no-{blocked.replace('_', '-')}"
    path = loom.write("job.yaml", case.job.format(job_id=job_id, model=case.model))
    recorder = HookRecorder()
    options = loom.options(plugins=(f"no:{blocked}",), settings_file=str(loom.path / "storyloom.yaml"), **overrides)
    summary = trio.run(lambda: run_job(path, options=options, plugins=(recorder,)))
    return RunResult(summary, recorder, loom.items(summary.job_id))


@pytest.mark.parametrize("blocked", BLOCKABLE)
def test_blocking_one_plugin_leaves_a_working_run(blocked, loom, fake_provider, receiver, capsys):
    case = CASES.get(blocked, Case())
    loom.write("storyloom.yaml", settings(blocked, fake_provider, receiver))
    sinks = tuple(sink for plugin, sink in SINKS.items() if plugin != blocked)
    if blocked == "terminal":
        sinks = ("plain", *sinks)  # the plain lines, from the progress plugin, stand in
    result = run_blocked(loom, blocked, case, quiet=False, progress=sinks)

    assert result.summary.status == case.status, result.summary
    result.assert_outcomes(**case.counts)
    job_id = result.summary.job_id
    out = loom.out_dir / job_id
    if blocked == "simulated":
        assert fake_provider.stats("m1").ok == case.counts["completed"]

    # Every plugin still registered does its part.
    written = {path.name for path in out.iterdir()}
    if blocked == "outputs":
        assert not written & set(case.outputs), written
    else:
        assert set(case.outputs) <= written, written
    reports = {"report.md", "report.json", "report.html"}
    assert (not reports & written) if blocked == "reports" else reports <= written, written
    if blocked == "eventlog":
        assert "events.jsonl" not in written
    else:
        kinds = [json.loads(line)["kind"] for line in (out / "events.jsonl").read_text(encoding="utf-8").splitlines()]
        assert kinds[0] == "batch_started" and kinds[-1] == "batch_finished"
    posted = [body["storyloom"]["kind"] for body in receiver.bodies]
    assert posted == ([] if blocked == "webhook" else ["batch_finished"]), posted
    stderr = capsys.readouterr().err
    assert f"[{job_id}] started" in stderr, stderr  # terminal's plain fallback, or plain itself
    assert f"[{job_id}] 100% 3/3 done" in stderr or case.counts != {"completed": 3}, stderr


def test_the_failing_job_pauses_while_the_failure_policy_is_on(loom, fake_provider, receiver):
    """So the ``no:failure_policy`` case shows the policy gone, not a job that never pauses."""
    loom.write("storyloom.yaml", settings("webhook", fake_provider, receiver))
    result = run_blocked(loom, "webhook", CASES["failure_policy"], progress=())
    assert result.summary.status == "paused"
    assert result.counts["pending"] > 0, result.counts

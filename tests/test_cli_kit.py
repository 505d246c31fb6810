"""The everyday commands, run as a user runs them (``cli.main`` in-process
through the ``main_in`` fixture; ``storyloom`` in a subprocess where the
process is the point: a terminal, a live worker, no tty, ``python -m``, a
bad input's exit): dry runs, samples, running a job again, finding the store
from a subfolder, global options, help, ``--json``."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storyloom import cli as storyloom_cli
from storyloom.store import StoreNotFound
from test_cli import ROOT, cli, popen, project, read_store, wait_for_completed

from fakeprovider import fake_provider  # noqa: F401 - the fixture

FAKE_SETTINGS = """
models:
  gpt:
    provider: openai
    model: m1
    base_url: {base}
    api_key_env: STORYLOOM_FAKE_OPENAI_KEY
    rpm: 60
    price: {{input: 1.0, output: 2.0}}
  gpt-b:
    provider: openai
    model: m2
    base_url: {base}
    api_key_env: STORYLOOM_FAKE_OPENAI_KEY
    rpm: 30
    price: {{input: 3.0, output: 6.0}}
default_models: [gpt, gpt-b]
"""

TWO_PROJECTS = """
job_id: {job_id}
job_type: chapter_writing
models: [{models}]
routing: {{strategy: round_robin}}
config: {{max_parallel: 2}}
items:
  - {{project_id: rain, chapters: 1-6, genre: fantasy}}
  - {{project_id: lantern, chapters: 1-4, genre: fantasy}}
"""

QUICK_MODELS = """
models:
  sim: {provider: simulated, latency_ms: 0, output_tokens: 40, seed: 3, price: {input: 1.0, output: 2.0}}
  sim-large: {provider: simulated, latency_ms: 0, output_tokens: 60, seed: 4, price: {input: 3.0, output: 9.0}}
default_models: [sim]
"""


def studio(tmp_path: Path, job_id: str = "two") -> Path:
    (tmp_path / "storyloom.yaml").write_text(QUICK_MODELS)
    (tmp_path / "jobs").mkdir(exist_ok=True)
    job = tmp_path / "jobs" / f"{job_id}.yaml"
    job.write_text(TWO_PROJECTS.format(job_id=job_id, models="sim, sim-large"))
    return job


def nothing_written(folder: Path) -> bool:
    return not (folder / ".storyloom").exists() and not (folder / "storyloom-out").exists()


# -- --dry-run


def test_dry_run_shows_routes_cost_and_time_and_sends_and_stores_nothing(tmp_path, fake_provider, main_in):  # noqa: F811
    (tmp_path / "storyloom.yaml").write_text(FAKE_SETTINGS.format(base=fake_provider.base_url("openai")))
    (tmp_path / "job.yaml").write_text(TWO_PROJECTS.format(job_id="dry", models="gpt, gpt-b"))
    out = main_in("run", "job.yaml", "--dry-run", "--json", cwd=tmp_path, env=fake_provider.env())
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["dry_run"] and plan["total_items"] == 10
    routes = [(row["item_id"], row["model"]) for row in plan["items"]]
    assert routes[:4] == [("rain-ch1", "gpt"), ("rain-ch2", "gpt-b"), ("rain-ch3", "gpt"), ("rain-ch4", "gpt-b")]
    assert all(row["route"]["strategy"] == "round_robin" for row in plan["items"])
    for row in plan["items"]:
        assert 0 < row["expected_usd"] < row["worst_usd"]
        assert row["expected_output_tokens"] == row["max_tokens"] // 2  # openai says nothing: half of max_tokens
    gpt, gpt_b = plan["models"]["gpt"], plan["models"]["gpt-b"]
    assert gpt["items"] == gpt_b["items"] == 5
    # Time: 5 requests at 60 rpm take 5 s at least; at 30 rpm, 10 s. Models run side by side.
    assert gpt["min_seconds"] == pytest.approx(5.0) and gpt_b["min_seconds"] == pytest.approx(10.0)
    assert plan["min_seconds"] == pytest.approx(10.0)
    assert plan["expected_usd"] == pytest.approx(sum(row["expected_usd"] for row in plan["items"]))
    assert plan["worst_usd"] > plan["expected_usd"]
    text = main_in("run", "job.yaml", "--dry-run", cwd=tmp_path, env=fake_provider.env())
    assert text.returncode == 0, text.stderr
    assert "dry run, nothing sent or stored; 10 item(s)" in text.stdout
    assert "rain-ch2  -> gpt-b" in text.stdout and "at least 10s by the rate limits" in text.stdout
    queued = main_in("submit", "job.yaml", "--dry-run", cwd=tmp_path, env=fake_provider.env())
    assert queued.returncode == 0 and "dry run" in queued.stdout, queued.stderr
    assert fake_provider.stats().requests == 0 and fake_provider.requests == [] and fake_provider.connections == 0
    assert nothing_written(tmp_path)


def test_dry_run_still_refuses_bad_input(tmp_path):
    job = project(tmp_path)
    job.write_text(job.read_text().replace("chapter_writing", "chapter_writng"))
    out = cli("run", "jobs/cli-job.yaml", "--dry-run", cwd=tmp_path)
    assert out.returncode == 2 and "jobs/cli-job.yaml:3:11" in out.stderr
    assert nothing_written(tmp_path)


# -- --sample


async def items_by_state(store, job_id: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for row in await store.items(job_id):
        found.setdefault(row.state, []).append(row)
    return found


def test_sample_runs_n_items_over_projects_and_models_then_resume_runs_the_rest(tmp_path, main_in):
    studio(tmp_path)
    out = main_in("run", "jobs/two.yaml", "--sample", "4", "-q", cwd=tmp_path)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "two: paused" in out.stdout and "4/10 completed" in out.stdout
    assert "sample of 4 item(s) cost $" in out.stdout and "the whole job of 10: about $" in out.stdout
    assert "storyloom resume two" in out.stderr
    states = read_store(tmp_path, lambda store: items_by_state(store, "two"))
    done = states["completed"]
    assert len(done) == 4 and len(states["pending"]) == 6
    assert {row.item_id.split("-")[0] for row in done} == {"rain", "lantern"}  # both projects
    assert {row.last_model for row in done} == {"sim", "sim-large"}  # both models
    status = json.loads(main_in("status", "two", "--json", cwd=tmp_path).stdout)
    assert status["state"] == "paused" and "sample of 4" in status["reason"]
    resumed = main_in("resume", "two", "-q", "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["status"] == "completed" and summary["counts"]["completed"] == 10
    attempts = read_store(tmp_path, lambda store: store.attempts("two"))
    assert sorted(a.item_id for a in attempts if a.state == "completed") == sorted(
        [f"rain-ch{i}" for i in range(1, 7)] + [f"lantern-ch{i}" for i in range(1, 5)])  # each once


def test_sample_extrapolates_cost_from_what_the_sample_cost(tmp_path, main_in):
    studio(tmp_path)
    out = main_in("run", "jobs/two.yaml", "--sample", "2", "--json", "-q", cwd=tmp_path)
    assert out.returncode == 3, out.stderr
    summary = json.loads(out.stdout)
    sample = summary["sample"]
    assert sample["items"] == 2 and sample["left"] == 8 and sample["total_items"] == 10
    assert sample["cost_usd"] == pytest.approx(summary["cost_usd"]) and sample["cost_usd"] > 0
    assert sample["projected_cost_usd"] == pytest.approx(summary["cost_usd"] / 2 * 10)
    assert sample["projected_seconds"] >= sample["seconds"]


def test_a_sample_as_large_as_the_job_completes_it(tmp_path, main_in):
    studio(tmp_path)
    out = main_in("run", "jobs/two.yaml", "--sample", "50", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "10/10 completed" in out.stdout


def test_sample_and_dry_run_together_is_a_usage_error(tmp_path, main_in):
    studio(tmp_path)
    out = main_in("run", "jobs/two.yaml", "--sample", "2", "--dry-run", cwd=tmp_path)
    assert out.returncode == 2 and "--dry-run and --sample" in out.stderr
    assert main_in("run", "jobs/two.yaml", "--sample", "0", cwd=tmp_path).returncode == 2
    assert nothing_written(tmp_path)


# -- running a job again


def test_the_demo_runs_twice_with_job_id_or_after_delete(tmp_path, main_in):
    shutil.copy(ROOT / "jobs" / "demo.yaml", tmp_path / "demo.yaml")
    (tmp_path / "storyloom.yaml").write_text(QUICK_MODELS)
    first = main_in("run", "demo.yaml", "-q", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "outputs: storyloom-out/demo-chapters/ (reports: report.html, report.json, report.md)" in first.stdout
    again = main_in("run", "demo.yaml", "-q", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "--job-id" in again.stderr and "storyloom delete demo-chapters" in again.stderr
    other = main_in("run", "demo.yaml", "-q", "--job-id", "demo-2", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert "demo-2: completed" in other.stdout and (tmp_path / "storyloom-out" / "demo-2" / "report.md").exists()
    refused = cli("delete", "demo-chapters", cwd=tmp_path)  # no tty to ask on
    assert refused.returncode == 2 and "--yes" in refused.stderr
    gone = main_in("delete", "demo-chapters", "--yes", cwd=tmp_path)
    assert gone.returncode == 0 and "demo-chapters: deleted (completed, 20 item(s))" in gone.stdout, gone.stderr
    assert read_store(tmp_path, lambda store: store.get_job("demo-chapters")) is None
    assert read_store(tmp_path, lambda store: store.get_job("demo-2")) is not None  # the other run stays
    third = main_in("run", "demo.yaml", "-q", cwd=tmp_path)
    assert third.returncode == 0 and "20/20 completed" in third.stdout, third.stderr
    assert main_in("delete", "nope", "--yes", cwd=tmp_path).returncode == 2


def test_a_bad_job_id_is_refused_before_anything_is_stored(tmp_path, main_in):
    studio(tmp_path)
    out = main_in("run", "jobs/two.yaml", "--job-id", "../escape", cwd=tmp_path)
    assert out.returncode == 2 and "--job-id '../escape'" in out.stderr
    assert nothing_written(tmp_path)


def test_submit_with_job_id_queues_the_job_under_it(tmp_path, main_in):
    studio(tmp_path)
    out = main_in("submit", "jobs/two.yaml", "--job-id", "nightly", cwd=tmp_path)
    assert out.returncode == 0 and "nightly: queued, 10 items" in out.stdout, out.stderr
    worked = main_in("work", "--burst", "-q", "--json", cwd=tmp_path)
    assert worked.returncode == 0, worked.stderr
    data = json.loads(worked.stdout)
    assert data["interrupted"] is False
    assert [(job["job_id"], job["status"], job["counts"]["completed"]) for job in data["jobs"]] == [
        ("nightly", "completed", 10)]


def _delete_on_a_tty(tmp_path: Path, answer: bytes) -> tuple[int, str]:
    master, slave = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    environ["STORYLOOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "storyloom", "delete", "two"], cwd=tmp_path, env=environ,
                            stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"[y/N]" not in seen:
            assert time.monotonic() < deadline, seen
            seen += os.read(master, 1024)
        os.write(master, answer)
        proc.wait(timeout=60)
        while True:
            try:
                chunk = os.read(master, 1024)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, seen.decode("utf-8", "replace")


@pytest.mark.slow
def test_delete_asks_on_a_terminal(tmp_path, main_in):
    studio(tmp_path)
    assert main_in("run", "jobs/two.yaml", "-q", cwd=tmp_path).returncode == 0
    code, shown = _delete_on_a_tty(tmp_path, b"n\n")
    assert code == 0 and "Delete job 'two'" in shown and "two: not deleted" in shown
    assert read_store(tmp_path, lambda store: store.get_job("two")) is not None
    code, shown = _delete_on_a_tty(tmp_path, b"y\n")
    assert code == 0 and "two: deleted" in shown, shown
    assert read_store(tmp_path, lambda store: store.get_job("two")) is None


@pytest.mark.slow
def test_delete_refuses_a_job_that_a_live_worker_runs(tmp_path, main_in):
    project(tmp_path, n=40, latency=300, parallel=2)
    proc = popen("run", "jobs/cli-job.yaml", "-q", cwd=tmp_path)
    try:
        wait_for_completed(tmp_path, "cli-job", 1)
        out = main_in("delete", "cli-job", "--yes", cwd=tmp_path)  # the worker is the other process
        assert out.returncode == 2 and "running in a live worker" in out.stderr, out.stderr
        assert read_store(tmp_path, lambda store: store.get_job("cli-job")) is not None
    finally:
        proc.kill()
        proc.wait(timeout=10)
    # The worker is gone: once its heartbeat and leases are older than the lease (2s), what it
    # left can be deleted.
    deadline = time.monotonic() + 30
    while (out := main_in("delete", "cli-job", "--yes", cwd=tmp_path)).returncode != 0 and time.monotonic() < deadline:
        assert "running in a live worker" in out.stderr, out.stderr
        time.sleep(0.2)
    assert out.returncode == 0, out.stderr


# -- where things are


def test_the_store_is_found_from_a_subfolder(tmp_path, main_in):
    studio(tmp_path)
    assert main_in("run", "jobs/two.yaml", "--sample", "2", "-q", cwd=tmp_path).returncode == 3
    deep = tmp_path / "jobs" / "drafts"
    deep.mkdir()
    status = main_in("status", "two", "--json", cwd=deep)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["completed"] == 2
    resumed = main_in("resume", "two", "-q", cwd=deep)
    assert resumed.returncode == 0, resumed.stderr
    # Outputs go beside the store, not into the subfolder.
    assert f"outputs: {tmp_path / 'storyloom-out' / 'two'}{os.sep}" in resumed.stdout
    assert len(list((tmp_path / "storyloom-out" / "two").glob("*-ch*.md"))) == 10
    assert not (deep / ".storyloom").exists() and not (deep / "storyloom-out").exists()
    assert not (tmp_path / "jobs" / ".storyloom").exists()


def test_a_stray_state_folder_above_captures_nothing(tmp_path, main_in):
    """Only a storyloom.yaml marks a studio: a .storyloom alone in a parent
    (in /tmp, say, above every test's folder) is not used."""
    (tmp_path / ".storyloom").mkdir()
    below = tmp_path / "elsewhere"
    below.mkdir()
    project(below, n=2)
    (below / "storyloom.yaml").rename(below / "settings.yaml")
    out = main_in("run", "jobs/cli-job.yaml", "--settings", "settings.yaml", "-q", cwd=below)
    assert out.returncode == 0, out.stderr
    assert (below / ".storyloom").is_dir() and list((tmp_path / ".storyloom").iterdir()) == []


def test_a_nearer_settings_file_starts_its_own_store(tmp_path, main_in):
    studio(tmp_path)
    assert main_in("run", "jobs/two.yaml", "--sample", "1", "-q", cwd=tmp_path).returncode == 3
    other = tmp_path / "other-studio"
    other.mkdir()
    (other / "storyloom.yaml").write_text(QUICK_MODELS)
    out = main_in("status", "two", cwd=other)
    assert out.returncode == 2 and "no store in .storyloom" in out.stderr


def test_global_options_work_before_the_subcommand_and_after_it(tmp_path, main_in):
    project(tmp_path, n=2)
    out = main_in("--state-dir", "elsewhere", "-p", "no:webhook", "run", "jobs/cli-job.yaml", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "elsewhere").is_dir() and not (tmp_path / ".storyloom").exists()
    assert "cli-job  chapter_writing  completed" in main_in("--state-dir", "elsewhere", "status", cwd=tmp_path).stdout
    assert "cli-job" in main_in("status", "--state-dir", "elsewhere", cwd=tmp_path).stdout
    # After the subcommand wins over before it; -p adds up from both places.
    missing = main_in("--state-dir", "elsewhere", "status", "--state-dir", "nowhere", cwd=tmp_path)
    assert missing.returncode == 2 and "no store in nowhere" in missing.stderr
    def blocked(*args: str) -> set[str]:  # pluggy lists a blocked name with no module of its own
        listing = main_in(*args, cwd=tmp_path).stdout
        return {line.split()[0] for line in listing.splitlines() if line.endswith("(builtins)")}

    assert blocked("plugins") == set()
    assert blocked("-p", "no:webhook", "plugins", "-p", "no:eventlog") == {"webhook", "eventlog"}


def test_usage_errors_carry_one_prefix(tmp_path, main_in):
    for args in (("run",), ("nosuch",), ("run", "x.yaml", "--max-parallel", "0"), ("resume", "nope")):
        out = main_in(*args, cwd=tmp_path)
        assert out.returncode == 2
        line = out.stderr.strip()
        assert line.startswith("storyloom: error: ") and line.count("error:") == 1, line
        assert "storyloom run:" not in line and "storyloom: storyloom" not in line


def test_every_command_has_an_example_in_its_help(capsys):
    parser = storyloom_cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"run", "submit", "delete", "validate", "work"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit):
            storyloom_cli.main([name, "--help"])
        shown = capsys.readouterr().out
        assert f"example:\n  storyloom {name}" in shown or "example:\n  storyloom -p" in shown, name


def test_python_dash_m_storyloom_is_the_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "storyloom", "--version"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("storyloom ")


# -- validate lists every problem


BAD_JOB = """job_id: bad-one
job_type: chapter_writing
priorty: high
config: {max_parallel: 0, max_retries: "3"}
items:
  - {project_id: a, chapters: 1-2, genre: fantasy, modle: x}
"""


def test_validate_reports_every_problem_in_a_file(tmp_path, main_in):
    project(tmp_path)
    (tmp_path / "bad.yaml").write_text(BAD_JOB)
    out = main_in("validate", "bad.yaml", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert [line.split(": ")[2] for line in lines] == [
        "bad.yaml:3:1", "bad.yaml:4:24", "bad.yaml:4:40", "bad.yaml:6:52"]
    assert all(line.startswith("storyloom: error: ") for line in lines)
    assert "'priorty'; did you mean 'priority'" in lines[0] and "items[0].modle" in lines[3]
    # run shows the first and says how many more there are.
    ran = main_in("run", "bad.yaml", cwd=tmp_path)
    assert ran.returncode == 2 and len(ran.stderr.strip().splitlines()) == 1
    assert "bad.yaml:3:1" in ran.stderr and "(and 3 more: `storyloom validate bad.yaml` lists them)" in ran.stderr
    assert nothing_written(tmp_path)


def test_validate_caps_the_problems_it_lists(tmp_path, capsys):
    project(tmp_path)
    entries = "".join(f"  - {{project_id: p{i}, chapters: 1-2, genre: fantasy, oops: {i}}}\n" for i in range(30))
    (tmp_path / "many.yaml").write_text("job_id: many\njob_type: chapter_writing\nitems:\n" + entries)
    code = storyloom_cli.main(["validate", str(tmp_path / "many.yaml"), "--settings",
                               str(tmp_path / "storyloom.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 21 and sum("unknown key 'oops'" in line for line in err) == 20
    assert "more problems not shown (the first 20 are)" in err[-1]


def test_validate_reports_each_bad_item_entry(tmp_path, main_in):
    project(tmp_path)
    (tmp_path / "items.yaml").write_text(
        "job_id: items\njob_type: chapter_writing\nmodels: [sim]\nitems:\n"
        "  - {item_id: a, project_id: p, chapter_num: 1, model: nope}\n"
        "  - {item_id: b, project_id: p, chapter_num: 2}\n"
        "  - {item_id: b, project_id: p, chapter_num: 3}\n")
    out = main_in("validate", "items.yaml", cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 2, out.stderr
    assert "items.yaml:5" in lines[0] and "unknown model 'nope'" in lines[0]
    assert "items.yaml:7" in lines[1] and "duplicate item_id 'b'" in lines[1]


# -- --json and where the outputs went


def test_run_json_is_one_object_and_plain_run_says_where_outputs_went(tmp_path):
    project(tmp_path, n=3)
    out = cli("run", "jobs/cli-job.yaml", "--json", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)  # the whole of stdout is one JSON object
    assert summary["status"] == "completed" and summary["exit_code"] == 0
    assert summary["counts"]["completed"] == 3 and summary["cost_usd"] > 0
    assert summary["out_dir"] == os.path.join("storyloom-out", "cli-job")
    again = cli("run", "jobs/cli-job.yaml", "--job-id", "plain", "-q", cwd=tmp_path)
    assert again.stdout.strip().splitlines()[-1] == (
        f"outputs: storyloom-out{os.sep}plain{os.sep} (reports: report.html, report.json, report.md)")


def test_resume_json_of_a_job_with_nothing_left(tmp_path, main_in):
    project(tmp_path, n=2)
    assert main_in("run", "jobs/cli-job.yaml", "-q", cwd=tmp_path).returncode == 0
    out = main_in("resume", "cli-job", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["idle"] is True and data["reason"].startswith("nothing to resume")


def test_nothing_is_created_by_reading_commands_in_a_subfolder(tmp_path, main_in):
    studio(tmp_path)
    with pytest.raises(StoreNotFound):
        read_store(tmp_path, lambda store: store.list_jobs())
    out = main_in("status", cwd=tmp_path / "jobs")
    assert out.returncode == 2 and f"no store in {tmp_path / '.storyloom'}" in out.stderr
    assert nothing_written(tmp_path) and nothing_written(tmp_path / "jobs")


def test_a_sample_takes_each_project_and_pinned_model_in_turn():
    from storyloom.api import pick_sample
    from storyloom.job import Item, Job

    items = ([Item(f"a{i}", project_id="a") for i in range(5)]
             + [Item(f"b{i}", project_id="b", model="big") for i in range(2)]
             + [Item(f"b-small{i}", project_id="b", model="small") for i in range(3)]
             + [Item("a-done", project_id="a", status="skipped")])
    job = Job(job_id="j", job_type="chapter_writing", items=tuple(items))
    assert pick_sample(job, 3) == ["a0", "b0", "b-small0"]
    assert pick_sample(job, 7) == ["a0", "b0", "b-small0", "a1", "b1", "b-small1", "a2"]
    assert len(pick_sample(job, 100)) == 10 and "a-done" not in pick_sample(job, 100)


def test_a_sample_of_a_job_with_nothing_to_run_just_ends(tmp_path):  # a subprocess: a hang here ends at 60 s
    studio(tmp_path)
    job = tmp_path / "jobs" / "two.yaml"
    job.write_text(job.read_text().replace("genre: fantasy}", "genre: fantasy, status: skipped}"))
    out = cli("run", "jobs/two.yaml", "--sample", "3", "-q", cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "0/10 completed" in out.stdout and "10 skipped" in out.stdout

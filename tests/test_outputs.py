"""Outputs are a projection of the store: result files, results.jsonl and
reports can be listed against the store, rebuilt from it, and a write that
fails (a full or unwritable output folder, a kill before the write) ends in
exit code 6 with one line, never in a traceback or a false success."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storyloom.store import StoreNotFound

SETTINGS = """
models:
  sim: {provider: simulated, latency_ms: 1, output_tokens: 40, seed: 5}
default_models: [sim]
"""

CHAPTERS = """
job_id: {job_id}
job_type: chapter_writing
config: {{max_parallel: 4}}
items:
  - {{project_id: rain, chapters: 1-{n}, genre: fantasy}}
"""

PROMPTS = """
job_id: blurbs
job_type: prompts
items:
  - {item_id: b1, prompt: "A blurb about rain."}
  - {item_id: b2, prompt: "A blurb about wind."}
  - {item_id: b3, messages: [{role: user, content: "Say hello."}]}
"""

#: Kills the process in loom_item_finished of the KILL_AFTER-th item: its
#: outcome is committed, its file not yet written (tryfirst: before the
#: outputs plugin).
KILLER = """
import os
import storyloom

seen = []

@storyloom.hookimpl(tryfirst=True)
def loom_item_finished(job, item, outcome):
    if outcome.state == "completed":
        seen.append(item.item_id)
        if len(seen) == int(os.environ["KILL_AFTER"]):
            os._exit(9)
"""


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    environ.update(STORYLOOM_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONPATH=str(cwd), **(env or {}))
    return subprocess.run([sys.executable, "-m", "storyloom.cli", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=120)


def files(folder: Path) -> dict[str, bytes]:
    """The chapter files of a folder, by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith("rain-")}


# -- the projection: list, rebuild -------------------------------------------


def test_outputs_lists_each_output_present_missing_or_partial(loom):
    loom.write("storyloom.yaml", SETTINGS)
    loom.run(PROMPTS).assert_outcomes(completed=3)
    folder = loom.out_dir / "blurbs"
    states = loom.outputs("blurbs")
    assert states == {"results.jsonl": "present", "errors.jsonl": "present", "b1.txt": "present", "b2.txt": "present", "b3.txt": "present",
                      "report.md": "present", "report.json": "present", "report.html": "present"}
    (folder / "b1.txt").unlink()
    (folder / "b2.txt").write_text("half a bl", encoding="utf-8")
    (folder / "report.md").unlink()
    states = loom.outputs("blurbs")
    assert (states["b1.txt"], states["b2.txt"], states["b3.txt"]) == ("missing", "partial", "present")
    assert states["report.md"] == "missing"
    assert not (folder / "b1.txt").exists()  # listing writes nothing


def test_rebuild_writes_every_output_byte_identical_from_the_store(loom):
    loom.write("storyloom.yaml", SETTINGS)
    loom.run(PROMPTS).assert_outcomes(completed=3)
    folder = loom.out_dir / "blurbs"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith("report")}
    for path in folder.iterdir():
        path.unlink()
    states = loom.outputs("blurbs", rebuild=True)
    assert set(states.values()) == {"rebuilt"} and len(states) == 8  # errors.jsonl (empty) too
    after = {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith("report")}
    assert after == before  # results.jsonl too: it is built from the store both times
    assert b"blurbs" in (folder / "report.md").read_bytes()
    assert set(loom.outputs("blurbs").values()) == {"present"}


def test_outputs_of_an_unknown_job_is_a_usage_error_that_creates_no_store(loom, capsys):
    from storyloom.cli import main

    assert main(["outputs", "nope", "--state-dir", str(loom.state_dir)]) == 2
    assert "no job 'nope'" in capsys.readouterr().err
    with pytest.raises(StoreNotFound):
        loom.read(lambda store: store.list_jobs())


def test_resume_of_a_finished_job_rebuilds_what_is_missing(loom):
    loom.write("storyloom.yaml", SETTINGS)
    loom.run(CHAPTERS.format(job_id="book", n=3)).assert_outcomes(completed=3)
    folder = loom.out_dir / "book"
    original = (folder / "rain-ch2.md").read_bytes()
    (folder / "rain-ch2.md").unlink()
    (folder / "report.json").unlink()
    result = loom.resume("book")
    assert result.summary.exit_code == 0
    assert result.summary.outputs_rebuilt == 2
    assert (folder / "rain-ch2.md").read_bytes() == original
    assert (folder / "report.json").stat().st_size > 0
    assert "loom_item_started" not in result.recorder.calls  # nothing ran again


# -- a write that fails: exit 6, one line, the store keeps the truth --------


def _blocked_out_dir(loom) -> Path:
    """An output folder that cannot be created, even by root: its parent is a file (ENOTDIR)."""
    (loom.path / "not-a-folder").write_text("in the way", encoding="utf-8")
    return loom.path / "not-a-folder" / "out"


def test_a_run_whose_outputs_cannot_be_written_ends_6_with_items_completed(loom):
    loom.write("storyloom.yaml", SETTINGS)
    out_dir = _blocked_out_dir(loom)
    result = loom.run(CHAPTERS.format(job_id="blocked", n=4), out_dir=str(out_dir))
    result.assert_outcomes(completed=4)  # the store is the truth
    assert result.summary.exit_code == 6
    problems = result.summary.output_problems
    assert len(problems) == 4 + 3  # four result files, three reports
    assert {p.path.name for p in problems} >= {"rain-ch1.md", "report.md"}


def test_a_report_that_cannot_be_written_ends_6_and_the_result_files_are_kept(loom):
    loom.write("storyloom.yaml", SETTINGS)
    (loom.out_dir / "book" / "report.md").mkdir(parents=True)  # in the report's way: EISDIR on the rename
    result = loom.run(CHAPTERS.format(job_id="book", n=2))
    assert result.summary.exit_code == 6
    assert [p.path.name for p in result.summary.output_problems] == ["report.md"]
    assert sorted(files(loom.out_dir / "book")) == ["rain-ch1.md", "rain-ch2.md"]
    assert (loom.out_dir / "book" / "report.json").exists()


def test_the_cli_says_in_one_line_which_path_failed_and_what_to_do(loom, main_in):
    loom.write("storyloom.yaml", SETTINGS)
    loom.write("job.yaml", CHAPTERS.format(job_id="blocked", n=3))
    out_dir = _blocked_out_dir(loom)
    proc = cli("run", "job.yaml", "-q", "--out-dir", str(out_dir), "--progress", "eventlog", cwd=loom.path)
    assert proc.returncode == 6, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("storyloom: error:")]
    assert len(errors) == 1, proc.stderr
    assert str(out_dir / "blocked") in errors[0] and "Not a directory" in errors[0]
    assert "storyloom outputs blocked --rebuild" in errors[0]
    assert "3/3 completed" in proc.stdout and "6 output(s) NOT written" in proc.stdout
    # What the operator is told to do works: here, another output folder.
    proc = main_in("outputs", "blocked", "--rebuild", "--out-dir", "elsewhere", cwd=loom.path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (loom.path / "elsewhere" / "blocked").iterdir()) == [
        "rain-ch1.md", "rain-ch2.md", "rain-ch3.md", "report.html", "report.json", "report.md"]


def test_work_ends_6_when_a_job_could_not_write_its_outputs(loom, main_in):
    loom.write("storyloom.yaml", SETTINGS)
    loom.write("job.yaml", CHAPTERS.format(job_id="queued", n=2))
    assert main_in("submit", "job.yaml", cwd=loom.path).returncode == 0  # set-up: in-process
    proc = cli("work", "--burst", "-q", "--out-dir", str(_blocked_out_dir(loom)), cwd=loom.path)
    assert proc.returncode == 6, proc.stderr
    assert "Traceback" not in proc.stderr and "storyloom outputs queued --rebuild" in proc.stderr


def test_outputs_exits_6_while_an_output_is_missing(loom, main_in):
    loom.write("storyloom.yaml", SETTINGS)
    loom.write("job.yaml", CHAPTERS.format(job_id="book", n=2))
    assert main_in("run", "job.yaml", "-q", cwd=loom.path).returncode == 0  # in-process; the exit 6 below is a process's
    assert main_in("outputs", "book", cwd=loom.path).returncode == 0
    (loom.out_dir / "book" / "rain-ch1.md").unlink()
    proc = cli("outputs", "book", cwd=loom.path)
    assert proc.returncode == 6
    assert "missing  storyloom-out/book/rain-ch1.md" in proc.stdout
    assert "storyloom outputs book --rebuild" in proc.stderr


@pytest.mark.slow
def test_a_full_output_disk_ends_6_and_a_rebuild_after_freeing_space_completes(loom, main_in):
    """A real ENOSPC: a tiny tmpfs as the output folder (needs mount rights)."""
    mount = loom.path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        filler = mount / "filler"
        with open(filler, "wb") as f:  # fill it up, leaving a few blocks
            f.write(b"x" * (480 * 1024))
        loom.write("storyloom.yaml", SETTINGS.replace("output_tokens: 40", "output_tokens: 600"))
        loom.write("job.yaml", CHAPTERS.format(job_id="full", n=12))
        proc = cli("run", "job.yaml", "-q", "--out-dir", str(mount), cwd=loom.path)
        assert proc.returncode == 6, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        assert "No space left on device (ENOSPC)" in proc.stderr and "free space" in proc.stderr
        assert "12/12 completed" in proc.stdout  # the store holds every item
        assert main_in("outputs", "full", "--out-dir", str(mount), cwd=loom.path).returncode == 6
        filler.unlink()
        proc = main_in("outputs", "full", "--rebuild", "--out-dir", str(mount), cwd=loom.path)
        assert proc.returncode == 0, proc.stderr
        assert len(files(mount / "full")) == 12
        assert not [p for p in (mount / "full").iterdir() if ".storyloom-tmp-" in p.name]
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# -- a kill between the commit and the file write ----------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["resume", "rebuild"])
def test_files_a_kill_lost_come_back_byte_identical(loom, tmp_path_factory, how):
    job = CHAPTERS.format(job_id="killed", n=12)
    normal = tmp_path_factory.mktemp("normal")
    for folder in (normal, loom.path):  # a 2 s lease: resume gets the killed run's items back in ~2.7 s, not 40 s
        (folder / "storyloom.yaml").write_text(SETTINGS + "queue: {lease: 2s}\n", encoding="utf-8")
        (folder / "job.yaml").write_text(job, encoding="utf-8")
    assert cli("run", "job.yaml", "-q", cwd=normal).returncode == 0
    expected = files(normal / "storyloom-out" / "killed")
    assert len(expected) == 12

    loom.write("killer.py", KILLER)
    proc = cli("run", "job.yaml", "-q", "-p", "killer", cwd=loom.path, env={"KILL_AFTER": "5"})
    assert proc.returncode == 9, proc.stderr
    folder = loom.out_dir / "killed"
    completed = [i for i, row in loom.items("killed").items() if row.state == "completed"]
    assert len(files(folder)) < len(completed)  # committed, never written

    args = ("resume", "killed", "-q") if how == "resume" else ("outputs", "killed", "--rebuild")
    proc = cli(*args, cwd=loom.path)
    assert proc.returncode == 0, proc.stderr
    if how == "rebuild":
        assert len(files(folder)) == len(completed)
        proc = cli("resume", "killed", "-q", cwd=loom.path)
        assert proc.returncode == 0, proc.stderr
    assert files(folder) == expected


def test_the_readme_exit_code_table_lists_every_code_the_cli_returns():
    from storyloom.summary import EXIT_CODES, EXIT_OUTPUTS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for code in sorted({*EXIT_CODES.values(), 2, EXIT_OUTPUTS}):
        assert f"\n| {code} | " in readme, f"README's exit-code table has no row for {code}"


def test_an_item_whose_id_holds_the_temporary_mark_keeps_its_output_file(loom):
    loom.write("storyloom.yaml", SETTINGS)
    loom.run(PROMPTS.replace("item_id: b1", "item_id: a.storyloom-tmp-1")).assert_outcomes(completed=3)
    folder = loom.out_dir / "blurbs"
    assert (folder / "a.storyloom-tmp-1.txt").read_text(encoding="utf-8").strip()
    assert loom.outputs("blurbs")["a.storyloom-tmp-1.txt"] == "present"

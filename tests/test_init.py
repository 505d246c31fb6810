"""``storyloom init [DIR]``: a studio folder that runs offline, from package data;
it never overwrites a file, and a failed write leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from storyloom import api, cli
from storyloom.config import Options
from storyloom.errors import ConfigError
from storyloom.init import template_files

from test_epub import epubcheck_command

EXPECTED = {"storyloom.yaml", "projects/lighthouse-ledger.yaml", "jobs/book.yaml", "jobs/demo.yaml"}


def test_the_template_holds_settings_a_project_and_two_jobs():
    assert set(template_files()) == EXPECTED


def test_init_makes_a_new_folder_whose_jobs_validate(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # offline: no job may need a key
    assert cli.main(["init", str(tmp_path / "studio")]) == 0
    out = capsys.readouterr().out
    studio = tmp_path / "studio"
    assert {p.relative_to(studio).as_posix() for p in studio.rglob("*") if p.is_file()} == EXPECTED
    assert "jobs/book.yaml" in out and f"cd {studio} && storyloom run jobs/book.yaml" in out
    for name in ("book", "demo"):
        job = api.validate_job(studio / "jobs" / f"{name}.yaml", options=Options(autoload=False))
        assert job.items
    settings = (studio / "storyloom.yaml").read_text(encoding="utf-8")
    assert "# gpt:" in settings and "#   api_key_env: OPENAI_API_KEY" in settings  # the real provider, commented


def test_init_makes_the_folders_a_new_dir_needs(tmp_path, capsys):
    assert cli.main(["init", str(tmp_path / "a" / "b")]) == 0
    assert (tmp_path / "a" / "b" / "projects" / "lighthouse-ledger.yaml").is_file()


def test_init_dot_fills_the_working_folder_and_keeps_other_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["init"]) == 0
    assert "next: storyloom run jobs/book.yaml" in capsys.readouterr().out
    assert (tmp_path / "jobs" / "book.yaml").is_file() and (tmp_path / "notes.txt").read_text() == "mine"


def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "demo.yaml").write_text("my own job")
    (tmp_path / "storyloom.yaml").write_text("my settings")
    assert cli.main(["init", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("storyloom: error:") == 1
    assert "would overwrite jobs/demo.yaml, storyloom.yaml; nothing was written" in err
    assert (tmp_path / "storyloom.yaml").read_text() == "my settings"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["demo.yaml", "jobs", "storyloom.yaml"]


def test_init_on_a_file_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    assert cli.main(["init", str(tmp_path / "taken")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_a_write_that_fails_half_way_keeps_nothing(tmp_path, capsys):
    (tmp_path / "projects").write_text("a file where the folder should be")  # jobs/ is written before it fails
    assert cli.main(["init", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "lighthouse-ledger.yaml" in err and "nothing was kept" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["projects"]  # jobs/ and its files are gone


@pytest.mark.slow
def test_init_then_run_the_pipeline_offline_ends_with_a_valid_epub(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORYLOOM_", "OPENAI_"))}
    env["STORYLOOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"

    def storyloom(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "storyloom", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=120)

    assert storyloom("init", "studio", cwd=tmp_path).returncode == 0
    studio = tmp_path / "studio"
    run = storyloom("run", "jobs/book.yaml", cwd=studio)
    assert run.returncode == 0, run.stderr
    assert "lighthouse-ledger: completed" in run.stdout
    book = studio / "storyloom-out" / "lighthouse-ledger" / "lighthouse-ledger.epub"
    with zipfile.ZipFile(book) as epub:
        chapters = [n for n in epub.namelist() if n.endswith(".xhtml") and "chapter" in n]
    assert len(chapters) == 2
    check = subprocess.run([*epubcheck_command(), str(book)], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr


def uncommented(settings: str) -> str:
    """The settings with the commented real-provider entry (from ``  # gpt:`` on) uncommented, as its comment says."""
    lines = settings.splitlines(keepends=True)
    start = lines.index("  # gpt:\n")
    return "".join(lines[:start] + [line.replace("# ", "", 1) for line in lines[start:]])


def test_the_commented_real_provider_is_the_tutorials_and_validates_once_uncommented(tmp_path, monkeypatch):
    tutorial = (Path(__file__).resolve().parent.parent / "docs" / "tutorial.md").read_text(encoding="utf-8")
    api.init_studio(tmp_path)
    settings = tmp_path / "storyloom.yaml"
    text = settings.read_text(encoding="utf-8")
    entry = uncommented(text)[len(text[:text.index("  # gpt:")]):]
    assert entry.startswith("  gpt:\n    provider: openai\n")
    assert f"cat >> storyloom.yaml <<'EOF'\n{entry}EOF\n" in tutorial  # one entry, in both places
    settings.write_text(uncommented(text), encoding="utf-8")
    demo = tmp_path / "jobs" / "demo.yaml"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):  # named, before anything is sent
        api.validate_job(demo, options=Options(autoload=False, models=("gpt",)))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert len(api.validate_job(demo, options=Options(autoload=False, models=("gpt",))).items) == 4
    assert len(api.validate_job(demo, options=Options(autoload=False)).items) == 4  # sim still the default

"""The malformed-input corpus (tests/data/malformed/, table in EXPECTED.tsv):
every case through the real ``storyloom validate``, which must exit 2 with one
line naming the file and line and what was wrong, no traceback, and nothing
written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from storyloom.cli import main

CORPUS = Path(__file__).parent / "data" / "malformed"
GOOD_JOB = "job_id: ok\njob_type: qc_processing\nitems:\n  - {item_id: a}\n"
#: The variable settings_key_unset.yaml names; the corpus needs it unset.
UNSET_KEY = "LOOM_CORPUS_UNSET_KEY"


def cases() -> list[tuple[str, int, str]]:
    rows = []
    for row in (CORPUS / "EXPECTED.tsv").read_text(encoding="utf-8").splitlines():
        if row and not row.startswith("#"):
            name, line, words = row.split("\t")
            rows.append((name, int(line), words))
    return rows


CASES = cases()


def stage(name: str, folder: Path) -> list[str]:
    """Copy the case into ``folder`` and return the validate arguments for it."""
    shutil.copy(CORPUS / name, folder / name)
    if name.startswith("settings_"):
        (folder / "job.yaml").write_text(GOOD_JOB)
        return ["validate", "--settings", name, "job.yaml"]
    if name.startswith("project_"):
        (folder / "projects").mkdir()
        shutil.move(folder / name, folder / "projects" / name)
        (folder / "storyloom.yaml").write_text("default_models: [simulated]\n")
        (folder / "job.yaml").write_text(f"{GOOD_JOB}  - {{item_id: b, project_id: {Path(name).stem}}}\n")
        return ["validate", "job.yaml"]
    if name.endswith(".jsonl"):
        (folder / "job.yaml").write_text(f"job_id: ok\njob_type: prompts\ninput: {name}\n")
        return ["validate", "job.yaml"]
    return ["validate", name]


def shown(name: str) -> str:
    """The file as the error names it."""
    return f"projects/{name}" if name.startswith("project_") else name


def check(name: str, line: int, words: str, code: int, err: str, folder: Path) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"storyloom: error: {shown(name)}:{line}:"), err
    assert words in err, err
    leftovers = sorted(p.name for p in folder.iterdir())
    assert ".storyloom" not in leftovers and "storyloom-out" not in leftovers, leftovers


def test_the_corpus_table_lists_every_file_once_and_is_large_enough():
    listed = [name for name, _line, _words in CASES]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(p.name for p in CORPUS.iterdir() if p.name != "EXPECTED.tsv")
    kinds = {name.split("_")[0] + Path(name).suffix for name in listed}
    assert {"job.yaml", "job.json", "settings.yaml", "jsonl.jsonl", "project.yaml"} <= kinds
    assert len(listed) >= 40


@pytest.mark.parametrize("name,line,words", CASES, ids=[c[0] for c in CASES])
def test_a_malformed_input_is_exit_2_at_its_file_and_line(name, line, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(UNSET_KEY, raising=False)
    monkeypatch.delenv("STORYLOOM_HOME", raising=False)
    monkeypatch.delenv("STORYLOOM_STORE", raising=False)
    code = main(stage(name, tmp_path))
    captured = capsys.readouterr()
    check(name, line, words, code, captured.err, tmp_path)
    assert captured.out == ""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["job_duplicate_key.json", "settings_unknown_option.yaml",
                                  "jsonl_temperature_high.jsonl", "project_unknown_style_key.yaml"])
def test_the_installed_command_says_the_same(name, tmp_path):
    (line, words), = [(l, w) for n, l, w in CASES if n == name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_") and k != UNSET_KEY}
    env["STORYLOOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    done = subprocess.run([sys.executable, "-m", "storyloom.cli", *stage(name, tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    check(name, line, words, done.returncode, done.stderr, tmp_path)

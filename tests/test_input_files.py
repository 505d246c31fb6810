"""A job's ``input:`` file: a regular file under the job file's folder (or a
root the settings allow), of bounded size; refused files are never read, and
errors never quote them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from storyloom import ConfigError
from storyloom import inputfile
from storyloom.loader import KnownNames, load_job, load_settings
from storyloom.plugins.prompts import PromptsJobType
from storyloom.settings import Settings

KNOWN = KnownNames(job_types={"prompts": PromptsJobType()})
REQUEST = json.dumps({"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"messages": [{"role": "user", "content": "hi"}]}}) + "\n"
SECRET = "root:x:0:0:TOP-SECRET-LINE"


def job_at(folder: Path, given: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(f"job_id: j\njob_type: prompts\ninput: '{given}'\n", encoding="utf-8")
    return path


def refused(job: Path, settings: Settings = Settings()) -> str:
    with pytest.raises(ConfigError) as info:
        load_job(job, settings, KNOWN)
    text = str(info.value)
    assert text.startswith(f"{job}:3:8: at input: "), text
    assert "TOP-SECRET" not in text
    return text


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A readable file beside, not under, the job's folder, holding a valid request and a secret."""
    path = tmp_path / "private" / "passwd.jsonl"
    path.parent.mkdir()
    path.write_text(REQUEST + SECRET + "\n", encoding="utf-8")
    return path


def test_dot_dot_out_of_the_job_folder_is_refused(tmp_path, outside):
    text = refused(job_at(tmp_path / "jobs", "../private/passwd.jsonl"))
    assert "outside the job file's folder" in text and "input_roots" in text


def test_etc_passwd_is_refused_unread(tmp_path):
    assert "outside the job file's folder" in refused(job_at(tmp_path / "jobs", "../../../../../../etc/passwd"))
    assert "outside the job file's folder" in refused(job_at(tmp_path / "jobs", "/etc/passwd"))


def test_an_absolute_path_outside_is_refused(tmp_path, outside):
    assert "outside the job file's folder" in refused(job_at(tmp_path / "jobs", str(outside)))


def test_an_absolute_path_inside_the_job_folder_is_fine(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "r.jsonl").write_text(REQUEST, encoding="utf-8")
    job = load_job(job_at(tmp_path / "jobs", str(tmp_path / "jobs" / "r.jsonl")), Settings(), KNOWN)
    assert [item.item_id for item in job.items] == ["r1"]


def test_a_symlink_inside_pointing_outside_is_refused(tmp_path, outside):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "requests.jsonl").symlink_to(outside)
    assert "outside the job file's folder" in refused(job_at(tmp_path / "jobs", "requests.jsonl"))


def test_a_symlink_inside_pointing_inside_is_fine(tmp_path):
    (tmp_path / "jobs" / "data").mkdir(parents=True)
    (tmp_path / "jobs" / "data" / "r.jsonl").write_text(REQUEST, encoding="utf-8")
    (tmp_path / "jobs" / "requests.jsonl").symlink_to(tmp_path / "jobs" / "data" / "r.jsonl")
    assert len(load_job(job_at(tmp_path / "jobs", "requests.jsonl"), Settings(), KNOWN).items) == 1


def test_dev_zero_is_refused_without_reading_it(tmp_path, monkeypatch):
    reads = []
    real_read = os.read
    # Only reads of what is not a regular file count: the job file itself is read the same way.
    monkeypatch.setattr(inputfile.os, "read", lambda fd, n: (
        None if stat.S_ISREG(os.fstat(fd).st_mode) else reads.append(n)) or real_read(fd, n))
    settings = Settings(input_roots=("/dev",))
    text = refused(job_at(tmp_path / "jobs", "/dev/zero"), settings)
    assert "is not a regular file" in text and reads == []


def test_a_folder_is_refused(tmp_path):
    (tmp_path / "jobs" / "sub").mkdir(parents=True)
    assert "is not a regular file" in refused(job_at(tmp_path / "jobs", "sub"))


def test_a_missing_file_is_named(tmp_path):
    assert "file not found" in refused(job_at(tmp_path / "jobs", "nowhere.jsonl"))


def test_a_file_over_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(inputfile, "MAX_INPUT_BYTES", 100)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "big.jsonl").write_text(REQUEST * 3 + SECRET, encoding="utf-8")
    text = refused(job_at(tmp_path / "jobs", "big.jsonl"))
    assert "larger than the 100-byte limit" in text


@pytest.mark.slow  # a subprocess: a hang must be a timeout, not a stuck test run
def test_a_fifo_is_refused_and_validate_does_not_hang(tmp_path):
    jobs = tmp_path / "jobs"
    job = job_at(jobs, "pipe.jsonl")
    os.mkfifo(jobs / "pipe.jsonl")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    environ["STORYLOOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    done = subprocess.run([sys.executable, "-m", "storyloom.cli", "validate", str(job)], cwd=tmp_path,
                          env=environ, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"{job}:3:8: at input: " in done.stderr and "is not a regular file" in done.stderr
    assert "Traceback" not in done.stderr


def test_settings_can_allow_another_root_relative_to_the_settings_file(tmp_path, outside):
    settings_file = tmp_path / "storyloom.yaml"
    settings_file.write_text("input_roots: [private]\n", encoding="utf-8")
    settings = load_settings(settings_file)
    assert settings.input_roots == (str((tmp_path / "private").resolve()),)
    with pytest.raises(ConfigError, match=r"passwd.jsonl:2:1: invalid JSON"):  # read now: its own errors
        load_job(job_at(tmp_path / "jobs", "../private/passwd.jsonl"), settings, KNOWN)
    outside.write_text(REQUEST, encoding="utf-8")
    job = load_job(job_at(tmp_path / "jobs", "../private/passwd.jsonl"), settings, KNOWN)
    assert [item.item_id for item in job.items] == ["r1"]
    assert "outside the job file's folder" in refused(job_at(tmp_path / "jobs", "/etc/passwd"), settings)


def test_an_input_root_must_be_a_list_of_folders(tmp_path):
    settings_file = tmp_path / "storyloom.yaml"
    settings_file.write_text("input_roots: private\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"storyloom.yaml:1:14: at input_roots: "):
        load_settings(settings_file)

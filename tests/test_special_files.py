"""A job or settings file that is a FIFO, a device or a folder is refused at
once, naming the file; ``validate`` never hangs on one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storyloom import ConfigError
from storyloom.loader import KnownNames, load_job, load_settings
from storyloom.plugins.jobtypes import JOB_TYPES
from storyloom.settings import Settings

KNOWN = KnownNames(job_types={t.name: t for t in JOB_TYPES})
JOB = "job_id: j1\njob_type: chapter_writing\nitems:\n  - item_id: a\n    chapter_num: 1\n"


def validate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    environ["STORYLOOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run([sys.executable, "-m", "storyloom.cli", "validate", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=30)


def job_refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_job(path, Settings(), KNOWN)
    return str(info.value)


@pytest.mark.slow  # a subprocess: a hang must be a timeout, not a stuck test run
def test_a_fifo_job_file_is_refused_and_validate_does_not_hang(tmp_path):
    job = tmp_path / "job.yaml"
    os.mkfifo(job)
    done = validate(str(job), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"storyloom: error: {job}: is not a regular file (a FIFO)", done.stderr


@pytest.mark.slow
def test_a_fifo_settings_file_is_refused_and_validate_does_not_hang(tmp_path):
    (tmp_path / "job.yaml").write_text(JOB, encoding="utf-8")
    settings = tmp_path / "settings.yaml"
    os.mkfifo(settings)
    done = validate("--settings", str(settings), "job.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"{settings}: is not a regular file (a FIFO)" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_device_is_refused_before_a_byte_is_read():
    assert job_refusal(Path("/dev/zero")) == "/dev/zero: is not a regular file (a device)"


def test_a_link_to_a_device_is_refused_as_a_settings_file(tmp_path):
    link = tmp_path / "storyloom.yaml"
    link.symlink_to("/dev/zero")
    with pytest.raises(ConfigError) as info:
        load_settings(link)
    assert str(info.value) == f"{link}: is not a regular file (a device)"


def test_a_folder_is_refused(tmp_path):
    assert job_refusal(tmp_path) == f"{tmp_path}: is not a regular file (a folder)"


def test_a_job_file_may_be_a_symlink_to_a_file(tmp_path):
    (tmp_path / "real.yaml").write_text(JOB, encoding="utf-8")
    (tmp_path / "job.yaml").symlink_to("real.yaml")
    assert load_job(tmp_path / "job.yaml", Settings(), KNOWN).job_id == "j1"

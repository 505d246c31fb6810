"""An installed wheel works as well as the editable install: plugins,
templates and schemas all come from package data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns(".venv", ".git", ".storyloom", "storyloom-out", "build", "dist", "*.egg-info",
                                "__pycache__", ".hypothesis", ".pytest_cache")


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)  # build a copy: the checkout stays clean
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("storyloom-*.whl")
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    return site


def run(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    env.update(PYTHONPATH=str(site), STORYLOOM_DISABLE_PLUGIN_AUTOLOAD="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_wheel_holds_every_package_and_its_data(wheel_site):
    pkg = wheel_site / "storyloom"
    for path in ("plugins/jobtypes.py", "plugins/providers/openai.py", "plugins/support/tracker.py",
                 "plugins/support/openai-chat-request.schema.json",
                 "plugins/templates/chapter_writing.j2",
                 "schemas/job.schema.json", "schemas/settings.schema.json", "plugins/stores/sqlite.py",
                 "store/opening.py", "cli.py"):
        assert (pkg / path).is_file(), path


@pytest.mark.slow
def test_a_job_runs_from_the_installed_wheel(wheel_site, tmp_path):
    (tmp_path / "job.yaml").write_text(
        "job_id: from-wheel\njob_type: chapter_writing\nitems:\n  - {project_id: p, chapters: 1-3}\n")
    where = run(["-c", "import storyloom, storyloom.plugins; print(storyloom.__file__); "
                 "print(storyloom.plugins.__file__)"], wheel_site, tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(wheel_site)) for line in where.stdout.split())  # not the checkout
    out = run(["-m", "storyloom.cli", "run", "job.yaml", "-q"], wheel_site, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "3/3 completed" in out.stdout
    assert (tmp_path / "storyloom-out" / "from-wheel" / "p-ch1.md").exists()


@pytest.mark.slow
def test_schema_errors_from_the_installed_wheel(wheel_site, tmp_path):
    (tmp_path / "bad.yaml").write_text("job_id: x\njob_type: export\nitems:\n  - {item_id: a, chapter_num: -1}\n")
    out = run(["-m", "storyloom.cli", "validate", "bad.yaml"], wheel_site, tmp_path)
    assert out.returncode == 2
    assert "bad.yaml:4:" in out.stderr and "chapter_num" in out.stderr


@pytest.mark.slow
def test_init_from_the_installed_wheel_writes_the_studio_template(wheel_site, tmp_path):
    out = run(["-m", "storyloom", "init", "studio"], wheel_site, tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ("storyloom.yaml", "projects/lighthouse-ledger.yaml", "jobs/book.yaml", "jobs/demo.yaml"):
        assert (tmp_path / "studio" / name).read_bytes() == (ROOT / "core" / "studio_template" / name).read_bytes()

"""docs/testing.md's studio example is real: its blocks, written into a copy
of this repository's studio folder, pass under pytest as a studio would run them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(DOC) if lang == language]


def files() -> dict[str, str]:
    """The python blocks that name their file on their first line (``# tests/test_x.py``)."""
    named = {}
    for body in blocks("python"):
        first, _, rest = body.partition("\n")
        if first.startswith("# ") and first.endswith(".py"):
            named[first[2:]] = body
    return named


def test_the_example_names_its_files():
    assert set(files()) == {"studio_plugins/house_routing.py", "tests/test_configuration.py"}
    assert len(blocks("yaml")) == 1 and len(blocks("ini")) == 1


@pytest.mark.slow  # a pytest of its own, as the studio runs it: about 3 s
def test_the_studio_example_passes_under_pytest(tmp_path):
    studio = tmp_path / "studio"
    for folder in ("jobs", "projects"):
        shutil.copytree(ROOT / folder, studio / folder)
    settings = (ROOT / "storyloom.yaml").read_text(encoding="utf-8")
    (studio / "storyloom.yaml").write_text(settings + "\n" + blocks("yaml")[0], encoding="utf-8")
    (studio / "pytest.ini").write_text(blocks("ini")[0], encoding="utf-8")
    for name, body in files().items():
        (studio / name).parent.mkdir(parents=True, exist_ok=True)
        (studio / name).write_text(body, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORYLOOM_", "PYTHONPATH"))}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=studio,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    jobs = len(list((studio / "jobs").glob("*.yaml")))
    assert re.search(rf"\b{jobs + 3} passed\b", out.stdout), out.stdout[-2000:]

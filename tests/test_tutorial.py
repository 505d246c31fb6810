"""docs/tutorial.md, followed literally: its ``sh`` blocks run in order in one
shell in an empty folder; the real provider's base URL is the one change,
pointed at the fake OpenAI server on 127.0.0.1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fakeprovider import FakeProviderServer

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```sh\n(.*?)^```$", DOC, re.S | re.M)
REAL_BASE_URL = "https://api.openai.com/v1"


def test_the_tutorial_is_linked_from_the_readme_and_names_its_substitution():
    assert "(docs/tutorial.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(BLOCKS) >= 5
    script = "\n".join(BLOCKS)
    assert script.count(REAL_BASE_URL) == 1 and f"`{REAL_BASE_URL}`" in DOC  # the one substitution, documented
    assert "storyloom init" in BLOCKS[0]


@pytest.mark.slow
def test_the_tutorial_runs_as_written(tmp_path):
    (key,) = re.findall(r'^export OPENAI_API_KEY="([^"]+)"$', "\n".join(BLOCKS), re.M)
    with FakeProviderServer() as server:
        server.keys["openai"] = key  # the placeholder is accepted as the reader's own key would be
        script = "\n".join(BLOCKS).replace(REAL_BASE_URL, server.base_url("openai"))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("STORYLOOM_", "OPENAI_", "PYTHON", "VIRTUAL_ENV"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `storyloom` on PATH
        env["STORYLOOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only what this checkout bundles
        done = subprocess.run(["bash", "-eu", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        stats = server.stats()
        sent = list(server.requests)
    studio = tmp_path / "my-studio"
    with zipfile.ZipFile(studio / "storyloom-out" / "lighthouse-ledger" / "lighthouse-ledger.epub") as epub:
        assert epub.read("mimetype") == b"application/epub+zip"
    assert "lighthouse-ledger: completed" in done.stdout and "demo: completed" in done.stdout
    # The real-provider step really went over HTTP: four chapters, each one request (the dry run sent none).
    assert len(sent) == 4 and stats.ok == 4
    assert {(r.kind, r.model) for r in sent} == {("openai", "gpt-4o-mini")}
    assert sorted(p.name for p in (studio / "storyloom-out" / "demo").glob("harbour-lights-ch*.md")) == [
        f"harbour-lights-ch{n}.md" for n in range(1, 5)]
    assert key not in (studio / "storyloom.yaml").read_text(encoding="utf-8")  # the key stayed in the environment

"""Every python example in docs/embedding.md runs and holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "embedding.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_the_doc_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS) - 1))  # the last block is a pytest test, run below
def test_embedding_example(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STORYLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")
    for earlier in BLOCKS[:index]:  # later examples build on the files earlier ones wrote
        exec(compile(earlier, f"embedding.md[{index}]", "exec"), {})
    exec(compile(BLOCKS[index], f"embedding.md[{index}]", "exec"), {})


def test_the_loom_fixture_example(loom):
    namespace: dict = {}
    exec(compile(BLOCKS[-1], "embedding.md[loom]", "exec"), namespace)
    namespace["test_our_chapter_job"](loom)

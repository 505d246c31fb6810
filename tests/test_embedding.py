"""Every python example in docs/embedding.md runs and holds."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from fakedist import install_plugin

DOC = Path(__file__).resolve().parent.parent / "docs" / "embedding.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_the_doc_has_examples():
    assert len(BLOCKS) >= 3


#: An installed plugin distribution (as pip leaves one: module, dist-info, entry point), so that the
#: autoloading example has one to find.
PLUGIN = """
import storyloom

@storyloom.hookimpl
def loom_register_renderers(register):
    register("shout", lambda report: ("report.shout", "!"))
"""


@pytest.fixture
def installed_plugin(tmp_path_factory, monkeypatch):
    install_plugin(tmp_path_factory.mktemp("site"), monkeypatch, "loom_shout", PLUGIN, "shout")
    yield "shout"
    sys.modules.pop("loom_shout", None)


@pytest.fixture(scope="module")
def doc_folder(tmp_path_factory):
    """One folder for the page's examples, run in order, each once: later
    examples build on the files earlier ones wrote. ``ran`` counts those run."""
    return {"path": tmp_path_factory.mktemp("embedding"), "ran": 0}


@pytest.mark.parametrize("index", range(len(BLOCKS) - 1))  # the last block is a pytest test, run below
def test_embedding_example(index, doc_folder, monkeypatch, installed_plugin):
    monkeypatch.chdir(doc_folder["path"])
    monkeypatch.setenv("STORYLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")
    for earlier in range(doc_folder["ran"], index):  # when run alone (-k), the ones before it first
        exec(compile(BLOCKS[earlier], f"embedding.md[{earlier}]", "exec"), {})
    doc_folder["ran"] = index + 1
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"embedding.md[{index}]", "exec"), namespace)
    if "installed" in namespace:  # the autoloading example: it saw the installed plugin, loaded only when asked
        assert installed_plugin in namespace["installed"] and installed_plugin in namespace["loaded"]
    if "error" in namespace:  # the nursery example: a group held the error, not a bare raise
        assert type(namespace["error"]).__name__ == "ConfigError"


def test_the_doc_shows_autoloading_and_exception_groups():
    assert any("except* storyloom.ConfigError" in b for b in BLOCKS)
    assert any("autoload=True" in b and "autoload=False" in b for b in BLOCKS)


def test_the_loom_fixture_example(loom):
    namespace: dict = {}
    exec(compile(BLOCKS[-1], "embedding.md[loom]", "exec"), namespace)
    namespace["test_our_chapter_job"](loom)

"""Every hookspec has an implementation in tests/sample_plugins/every_hook.py that a
test sees fire, and a section in docs/hooks.md (datasette's meta-tests)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import trio

import storyloom.api
from storyloom import hookspecs
from sample_plugins import every_hook
from hook_signatures import documented_lines, signature_line

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("loom_"))

SETTINGS = """
models:
  echo-a: {provider: echo}
  echo-b: {provider: echo}
progress: [counting]
reports: [count]
retry_config: {policy: never}
"""

JOB = """
job_id: every-hook
job_type: shout
models: [echo-a, echo-b]
routing: {strategy: last}
items:
  - {item_id: a, title: hello}
  - {item_id: b, title: สวัสดี}
"""


def test_hookspecs_are_found():
    assert len(HOOKS) >= 13, HOOKS


@pytest.mark.parametrize("name", HOOKS)
def test_every_hookspec_is_implemented_by_the_test_plugin(name):
    assert callable(getattr(every_hook, name, None)), f"tests/sample_plugins/every_hook.py does not implement {name}"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hookspec_is_documented(name):
    docs = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    assert re.search(rf"^### {name}$", docs, re.M), f"docs/hooks.md has no '### {name}' section"
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    # As pytest's hookspec.py does: each parameter by name, when it is called, whether it may raise.
    params = list(inspect.signature(getattr(hookspecs, name)).parameters)
    documented = re.findall(r"^:param (\w+):", doc, re.M)
    assert documented == params, f"{name}'s docstring documents parameters {documented}, not {params}"
    assert re.search(r"\bCalled\b", doc), f"{name}'s docstring does not say when it is called"
    assert re.search(r"\b(raises?|exception)\b", doc, re.I), f"{name}'s docstring does not say whether it may raise"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_section_starts_with_its_signature_from_the_hookspec(name):
    # Generated: `python tests/hook_signatures.py` rewrites these lines after a hookspec changes.
    docs = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    assert documented_lines(docs).get(name) == signature_line(name), (
        f"docs/hooks.md's {name} signature differs from core/hookspecs.py: run `python tests/hook_signatures.py`")


def test_the_signature_check_sees_a_changed_hookspec(monkeypatch):
    docs = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")

    def loom_item_started(job, item, attempt: int, model: str, worker: str) -> None:
        """A grown spec."""

    monkeypatch.setattr(hookspecs, "loom_item_started", loom_item_started)
    assert documented_lines(docs)["loom_item_started"] != signature_line("loom_item_started")
    assert "worker: str" in signature_line("loom_item_started")


def test_docs_name_no_unknown_hooks():
    docs = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    assert set(re.findall(r"^### (loom_\w+)$", docs, re.M)) == set(HOOKS)


@pytest.fixture
def calls():
    every_hook.CALLS.clear()
    yield every_hook.CALLS
    every_hook.CALLS.clear()


def test_every_hook_fires(loom, calls):
    loom.write("storyloom.yaml", SETTINGS)
    result = loom.run(JOB, plugins=(every_hook,))
    result.assert_outcomes(completed=2)
    assert loom.outputs("every-hook", plugins=(every_hook,))["shouted.txt"] == "missing"  # no run writes it
    assert loom.outputs("every-hook", rebuild=True, plugins=(every_hook,))["shouted.txt"] == "rebuilt"
    # The book-project hooks: what `storyloom book` and `storyloom approve` call.
    options = loom.options(settings_file=str(loom.path / "storyloom.yaml"))
    view = trio.run(lambda: storyloom.api.book("every-book", options=options, plugins=(every_hook,)))
    assert view == {"project_id": "every-book", "artifacts": 0, "text": ["every-book: 0"]}
    said = trio.run(lambda: storyloom.api.approve("every-book", ["everything"], options=options, plugins=(every_hook,)))
    assert said == "opened 0 item(s)"
    shouted = (loom.out_dir / "every-hook" / "shouted.txt").read_text(encoding="utf-8")
    assert shouted == "HELLO\n" + "สวัสดี".upper() + "\n"
    assert set(HOOKS) <= set(calls), f"never called: {sorted(set(HOOKS) - set(calls))}"
    # Registered objects were used, chosen by name.
    assert {c["model"] for c in calls["loom_item_started"]} == {"echo-b"}  # the 'last' strategy
    assert (loom.out_dir / "every-hook" / "b.txt").read_text(encoding="utf-8") == "สวัสดี".upper()
    assert (loom.out_dir / "every-hook" / "count.txt").exists()
    assert [c["kind"] for c in calls["sink.event"]][0] == "batch_started"
    assert [c["kind"] for c in calls["sink.event"]][-1] == "batch_finished"
    assert len(calls["provider.aclose"]) == 2
    assert calls["loom_batch_finished"][0]["summary"].status == "completed"
    assert calls["batch_finished.results"][0]["counts"]["completed"] == 2  # the returned callable was awaited
    finished = {c["item_id"]: c["outcome"] for c in calls["loom_item_finished"]}
    assert finished["a"].state == "completed" and finished["a"].result.text == "HELLO"


def test_validate_hook_can_reject_a_job_before_anything_is_written(loom, calls):
    loom.write("storyloom.yaml", SETTINGS)
    with pytest.raises(Exception) as info:
        loom.run(JOB + "vars: {reject: true}\n", plugins=(every_hook,))
    assert "rejected by the every_hook plugin" in str(info.value)
    assert "vars.reject" in str(info.value)
    assert not loom.state_dir.exists()


"""docs/architecture.md names real code: its hooks, registries, dotted names
and file paths exist, and the arrows it allows are the imports the code has."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

from storyloom import hookspecs
from storyloom.registry import REGISTRY_HOOKS

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
HOOKS = {name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("loom_")}
DOTTED = sorted(set(re.findall(r"`(storyloom(?:\.\w+)+)", DOC)) - {"storyloom.yaml"})
#: Paths to files, leaving out patterns such as plugins/stores/NAME.py.
PATHS = sorted(p for p in set(re.findall(r"`((?:core|plugins|schemas|tests|docs)/[\w./-]+\.\w+)`", DOC))
               if "NAME" not in p)


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.S | re.M)
    assert match, f"docs/architecture.md has no '## {title}' section"
    return match.group(1)


def test_the_hook_list_is_every_hookspec():
    assert set(re.findall(r"`(loom_\w+)`", section("Hooks"))) == HOOKS


def test_the_registry_table_is_the_registries():
    rows = re.findall(r"^\| `(\w+)` \| `(loom_\w+)` \|", section("Registries"), re.M)
    assert dict(rows) == {attr: hook for attr, (hook, _noun) in REGISTRY_HOOKS.items()}


def resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)  # AttributeError: the page names something that is not there
        return obj
    raise ModuleNotFoundError(dotted)


def test_the_page_names_code_at_all():
    assert len(DOTTED) > 40 and len(PATHS) > 10


@pytest.mark.parametrize("dotted", DOTTED)
def test_every_dotted_name_resolves(dotted):
    resolve(dotted)


@pytest.mark.parametrize("path", PATHS)
def test_every_file_it_names_exists(path):
    assert (ROOT / path).exists(), path


def storyloom_imports(path: Path, package: str) -> set[str]:
    """The storyloom modules a file imports, relative imports resolved against ``package``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("storyloom")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("storyloom"):
                found |= {f"{base}.{a.name}" for a in node.names} | {base}
    return found


def kernel_modules() -> list[tuple[Path, str]]:
    out = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        rel = path.relative_to(ROOT / "core").with_suffix("")
        package = ".".join(("storyloom", *rel.parts[:-1]))
        out.append((path, package))
    return out


def test_the_kernel_imports_no_plugin_module():
    offenders = {}
    for path, package in kernel_modules():
        plugin_imports = {m for m in storyloom_imports(path, package) if m.startswith("storyloom.plugins")}
        # The package itself may be read for its list of bundled modules, nothing below it.
        extra = {m for m in plugin_imports
                 if m not in ("storyloom.plugins", "storyloom.plugins.DEFAULT_PLUGINS",
                              "storyloom.plugins.ESSENTIAL_PLUGINS")}
        if extra:
            offenders[str(path.relative_to(ROOT))] = sorted(extra)
    assert not offenders, offenders


def test_the_face_goes_through_the_api():
    imported = storyloom_imports(ROOT / "core" / "cli.py", "storyloom")
    # Error and summary types are fine; what opens a store or runs a worker is not.
    forbidden = {m for m in imported
                 if m.startswith(("storyloom.kernel", "storyloom.jobrun", "storyloom.attempt",
                                  "storyloom.store.opening", "storyloom.plugins"))
                 or m.rsplit(".", 1)[-1] in ("open_store", "open_store_url", "Worker", "JobRun", "run_attempt")}
    assert not forbidden, f"core/cli.py goes around storyloom.api: {sorted(forbidden)}"

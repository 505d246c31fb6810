"""Plugins depend on the kernel, never on one another.

A bundled plugin imports the kernel (``storyloom.*`` outside
``storyloom.plugins``) and the helpers (``storyloom.plugins.support``, and
the providers' shared base ``storyloom.plugins.providers.http`` and its
HTTP transport ``storyloom.plugins.providers.transport``, the
``jobtypes`` plugin's own package ``storyloom.plugins.studio``), never
another plugin's module, so ``-p no:NAME`` takes away nothing the other
plugins use. Helpers are never registered as plugins.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

from storyloom.pluginmanager import DEFAULT_PLUGINS, make_plugin_manager
from storyloom.plugins import studio, support

#: Modules under ``storyloom.plugins`` that plugins may import: helpers, not plugins.
HELPERS = ("storyloom.plugins.providers.http", "storyloom.plugins.providers.transport", "storyloom.plugins.studio",
           "storyloom.plugins.stores.pg_listen",
           *(f"storyloom.plugins.support.{m.name}" for m in pkgutil.iter_modules(support.__path__)),
           *(f"storyloom.plugins.studio.{m.name}" for m in pkgutil.iter_modules(studio.__path__)))
PLUGIN_MODULES = set(DEFAULT_PLUGINS.values())


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent that is not a package
        return False


def imported_modules(module: str) -> set[str]:
    """Every module ``module``'s source imports, anywhere in the file, relative
    imports resolved; ``from pkg import name`` counts as ``pkg.name`` when that is a module."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"), filename=spec.origin)
    package = module if spec.submodule_search_locations else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                if node.level else node.module
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if module_exists(candidate) else base)
    return found


def test_the_walker_sees_relative_and_from_package_imports():
    assert "storyloom.plugins.providers.http" in imported_modules("storyloom.plugins.providers.openai")
    assert "storyloom.plugins.support.charts" in imported_modules("storyloom.plugins.reports")


@pytest.mark.parametrize("module", sorted(PLUGIN_MODULES | set(HELPERS)))
def test_a_bundled_plugin_or_helper_imports_no_plugin_module(module):
    """Plugins and helpers alike: a helper importing a plugin would bring the dependency back."""
    inside = {name for name in imported_modules(module) if name.startswith("storyloom.plugins.")}
    others = sorted(name for name in inside if name in PLUGIN_MODULES and name != module)
    assert not others, f"{module} imports plugin module(s) {others}; move what they share to storyloom.plugins.support"
    # Anything else under storyloom.plugins must be a helper (or a package holding one).
    strays = sorted(name for name in inside - PLUGIN_MODULES
                    if name not in HELPERS and not any(h.startswith(name + ".") for h in HELPERS))
    assert not strays, f"{module} imports {strays}, which is neither the kernel nor a helper"


def test_helpers_are_never_registered_as_plugins():
    pm = make_plugin_manager(autoload=False)
    registered = {getattr(plugin, "__name__", None) for plugin in pm.get_plugins()}
    assert not registered & {*HELPERS, "storyloom.plugins.support"}
    for helper in HELPERS:
        module = importlib.import_module(helper)
        hooks = sorted(name for name in vars(module) if name.startswith("loom_"))
        assert not hooks, f"helper {helper} defines hook implementations {hooks}"

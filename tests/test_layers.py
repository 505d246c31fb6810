"""The kernel's modules form layers: each imports alone, none imports in a
circle (not even under ``TYPE_CHECKING``), and every name imported for type
checking exists where it is imported from."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import storyloom
import storyloom.plugins
import storyloom.plugins.providers
import storyloom.store

#: Package -> its folder, as pyproject's package-dir maps them.
PACKAGES = {
    "storyloom": Path(storyloom.__file__).parent,
    "storyloom.store": Path(storyloom.store.__file__).parent,
    "storyloom.plugins": Path(storyloom.plugins.__file__).parent,
    "storyloom.plugins.providers": Path(storyloom.plugins.providers.__file__).parent,
}
CORE = ("storyloom", "storyloom.store")
#: The modules the architecture issue found in a circle.
KERNEL = ("kernel", "jobrun", "attempt", "hookspecs", "config", "pluginmanager")
#: The types layer: it may import only these storyloom modules, even under TYPE_CHECKING.
TYPES_LAYER = {
    "storyloom.contracts": {"storyloom", "storyloom.errors", "storyloom.events",
                            "storyloom.job", "storyloom.settings", "storyloom.registry",
                            "storyloom.artifacts"},
    "storyloom.artifacts": set(),
}
#: Modules a protocol module must never name: those that implement or use its protocols.
ABOVE = {f"storyloom.{m}" for m in ("attempt", "jobrun", "kernel", "config", "pluginmanager", "api", "cli",
                                    "testing")}


def modules(packages: tuple[str, ...]) -> dict[str, Path]:
    """Module name -> source file, for every module of ``packages`` (not their subpackages)."""
    out: dict[str, Path] = {}
    for package in packages:
        for path in sorted(PACKAGES[package].glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _target(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names."""
    if not node.level:
        return node.module or ""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports(module: str, path: Path, *, type_checking: bool) -> list[tuple[str, list[str], bool]]:
    """(module imported, names, under TYPE_CHECKING) for the module-level imports
    of one file; with ``type_checking`` False the TYPE_CHECKING blocks are left out.
    Imports inside functions are never counted: they run late, by design."""
    found: list[tuple[str, list[str], bool]] = []

    def visit(body: list[ast.stmt], guarded: bool) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend((alias.name, [], guarded) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                found.append((_target(module, path, node), [a.name for a in node.names], guarded))
            elif isinstance(node, ast.If):
                if _is_type_checking(node.test):
                    if type_checking:
                        visit(node.body, True)
                    visit(node.orelse, guarded)
                else:
                    visit(node.body, guarded)
                    visit(node.orelse, guarded)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    visit(block, guarded)

    visit(ast.parse(path.read_text(encoding="utf-8")).body, False)
    return found


def graph(packages: tuple[str, ...], *, type_checking: bool) -> dict[str, set[str]]:
    """Module -> the storyloom modules it imports (``from . import loader`` names the
    submodule; ``from . import hookimpl`` names the package)."""
    known = modules(packages)
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, names, _ in imports(name, path, type_checking=type_checking):
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            if subs:
                edges[name].update(subs)
            if len(subs) < len(names) or not names:
                if target in known:
                    edges[name].add(target)
        edges[name].discard(name)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as a list of modules that starts and ends with the same one."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(edges, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = GREY
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if color.get(nxt) == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if color.get(nxt) == WHITE:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        color[node] = BLACK
        return None

    for node in sorted(edges):
        if color[node] == WHITE:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_each_core_module_imports_alone():
    names = sorted(modules(CORE))
    script = textwrap.dedent(f"""
        import importlib, sys, traceback
        failed = []
        for name in {names!r}:
            for loaded in [m for m in sys.modules if m == "storyloom" or m.startswith("storyloom.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception:
                failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"modules that do not import alone:\n{done.stdout}{done.stderr}"


def test_core_imports_form_no_cycle():
    cycle = find_cycle(graph(CORE, type_checking=False))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_core_imports_form_no_cycle_counting_type_checking_imports():
    cycle = find_cycle(graph(CORE, type_checking=True))
    assert cycle is None, "import cycle (counting TYPE_CHECKING imports): " + " -> ".join(cycle or ())


@pytest.mark.parametrize("name", KERNEL)
def test_kernel_modules_reach_no_circle_back_to_themselves(name):
    # The circle the architecture issue named, one module at a time, so a
    # failure says which of them is in it.
    edges = graph(CORE, type_checking=True)
    start = f"storyloom.{name}"
    came_from: dict[str, str] = {}
    todo = [start]
    while todo:
        node = todo.pop()
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                pytest.fail(f"{start} imports itself: " + " -> ".join([start, *reversed(path[:-1]), start]))
            if nxt not in came_from:
                came_from[nxt] = node
                todo.append(nxt)


def test_hookspecs_name_only_types():
    behaviour = {f"storyloom.{m}" for m in ("config", "kernel", "jobrun", "attempt", "pluginmanager", "api")}
    path = modules(CORE)["storyloom.hookspecs"]
    named = {target for target, _, _ in imports("storyloom.hookspecs", path, type_checking=True)}
    assert not named & behaviour, f"hookspecs imports behaviour: {sorted(named & behaviour)}"


@pytest.mark.parametrize("module", sorted(TYPES_LAYER))
def test_types_layer_imports_no_behaviour(module):
    path = modules(CORE)[module]
    named = {target for target, _, _ in imports(module, path, type_checking=True)
             if target == "storyloom" or target.startswith("storyloom.")}
    assert named <= TYPES_LAYER[module], f"{module} imports {sorted(named - TYPES_LAYER[module])}"


@pytest.mark.parametrize("module", ["storyloom.contracts", "storyloom.roles", "storyloom.hooks"])
def test_protocols_name_nothing_above_them(module):
    path = modules(CORE)[module]
    named = {target for target, _, _ in imports(module, path, type_checking=True)}
    assert not named & ABOVE, f"{module} imports {sorted(named & ABOVE)}"


def test_every_type_checking_import_resolves():
    missing = []
    every = modules(("storyloom", "storyloom.store", "storyloom.plugins", "storyloom.plugins.providers"))
    for name, path in every.items():
        for target, names, guarded in imports(name, path, type_checking=True):
            if not guarded:
                continue
            try:
                imported = importlib.import_module(target)
            except ImportError as exc:
                missing.append(f"{name}: {target} ({exc})")
                continue
            for attr in names:
                if not hasattr(imported, attr):
                    try:
                        importlib.import_module(f"{target}.{attr}")
                    except ImportError:
                        missing.append(f"{name}: from {target} import {attr}")
    assert not missing, "TYPE_CHECKING imports that do not resolve:\n" + "\n".join(missing)


def test_find_cycle_names_the_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# -------------------------------------------------------------------------
# Typed hook calls
# -------------------------------------------------------------------------


def _hook_methods() -> dict[str, object]:
    from storyloom.hooks import Hooks

    return {name: fn for name, fn in vars(Hooks).items() if callable(fn) and not name.startswith("_")}


def test_every_hook_the_kernel_calls_has_a_typed_method_with_the_specs_arguments():
    import inspect

    from storyloom import hookspecs

    specs = {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
             if name.startswith("loom_") and not name.startswith("loom_register_")}  # registries: collect()
    methods = _hook_methods()
    assert sorted(methods) == sorted(name.removeprefix("loom_") for name in specs)
    for name, spec in specs.items():
        params = inspect.signature(methods[name.removeprefix("loom_")]).parameters.values()
        assert all(p.kind is p.KEYWORD_ONLY for p in list(params)[1:]), name
        assert [p.name for p in list(params)[1:]] == list(inspect.signature(spec).parameters), name


def test_the_kernel_calls_no_hook_by_name():
    # Only storyloom.hooks touches ``pm.hook``; everything else goes through its typed methods.
    offenders = []
    for name, path in modules(CORE).items():
        if name == "storyloom.hooks":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if ".hook.loom_" in line or "call_hook(" in line or 'hook, "loom_' in line:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, "hooks called by name:\n" + "\n".join(offenders)

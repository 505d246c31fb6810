"""Building the one ``pluggy.PluginManager("storyloom")``.

Order, decided here only: bundled plugins (by module name, like pytest's
``default_plugins``), then entry points of the ``storyloom`` group, then
``-p`` names, then ``plugins:`` from the settings file and the job.

The bundled list is not kept here: the ``storyloom.plugins`` package declares
what it bundles (``DEFAULT_PLUGINS``, ``ESSENTIAL_PLUGINS``), and this module
re-exports both.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types
from typing import Iterable, Iterator

import pluggy

from . import hookspecs
from .errors import ConfigError, Location, UsageError
from .plugins import DEFAULT_PLUGINS, ESSENTIAL_PLUGINS

__all__ = ["DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "ESSENTIAL_PLUGINS", "check", "import_plugin",
           "make_plugin_manager"]

ENTRY_POINT_GROUP = "storyloom"


class LoomPluginManager(pluggy.PluginManager):
    """pluggy's manager, quicker to fill: a bundled plugin is a module of ~50
    names, and pluggy looks each one up with ``inspect.getattr_static``, most of
    the time a manager takes to build (one per config, so per store opened). A
    module's plain function or other value is read from its ``__dict__`` here
    with the same answer; everything else goes to pluggy as before."""

    def parse_hookimpl_opts(self, plugin, name):
        if isinstance(plugin, types.ModuleType):
            value = plugin.__dict__.get(name, _ABSENT)
            if value is not _ABSENT and not isinstance(value, _WRAPPED):
                if not isinstance(value, types.FunctionType):
                    return None  # not hookable (a class, module, constant)
                opts = getattr(value, self.project_name + "_impl", None)
                return opts if isinstance(opts, dict) else None
        return super().parse_hookimpl_opts(plugin, name)


_ABSENT = object()
#: Module values pluggy unwraps itself (staticmethod, classmethod, bound methods).
_WRAPPED = (staticmethod, classmethod, types.MethodType)


def make_plugin_manager(plugin_args: Iterable[str] = (), *, autoload: bool | None = None) -> pluggy.PluginManager:
    """Register bundled plugins, entry points and ``-p`` plugins; honour ``-p no:NAME``.

    ``autoload`` None means "unless STORYLOOM_DISABLE_PLUGIN_AUTOLOAD is set".
    """
    pm = LoomPluginManager("storyloom")
    pm.add_hookspecs(hookspecs)
    if os.environ.get("STORYLOOM_TRACE_PLUGINS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()

    plugin_args = list(plugin_args)
    for arg in plugin_args:
        if arg.startswith("no:"):
            name = arg[3:]
            if name in ESSENTIAL_PLUGINS:
                raise UsageError(f"plugin {name!r} is essential and cannot be blocked")
            pm.set_blocked(name)

    for name, module in DEFAULT_PLUGINS.items():
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module), name=name)

    if autoload is None:
        autoload = not os.environ.get("STORYLOOM_DISABLE_PLUGIN_AUTOLOAD")
    if autoload:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)

    for arg in plugin_args:
        if not arg.startswith("no:"):
            import_plugin(pm, arg)
    return pm


def import_plugin(pm: pluggy.PluginManager, modname: str, where: Location | None = None, path: str = "",
                  folder: str | os.PathLike | None = None) -> None:
    """Import and register a plugin module by name (a no-op if already there or blocked).

    ``folder`` (the settings file's) is searched first for this import only,
    as Python searches a script's folder: a studio's ``plugins:`` modules sit
    beside its ``storyloom.yaml`` and need no ``PYTHONPATH``.
    """
    if pm.is_blocked(modname) or pm.get_plugin(modname) is not None:
        return
    try:
        with _searched_first(folder):
            module = importlib.import_module(modname)
    except ImportError as exc:
        message = f"cannot import plugin {modname!r}: {exc}"
        if where is not None:
            raise ConfigError(where, path, message) from None
        raise UsageError(message) from None
    pm.register(module, name=modname)


@contextlib.contextmanager
def _searched_first(folder: str | os.PathLike | None) -> Iterator[None]:
    """``folder`` at the front of ``sys.path`` while the block runs, then taken
    out again: no lasting change to the process's imports (an embedding
    program's included). Modules imported meanwhile stay imported."""
    entry = os.fspath(folder) if folder is not None else None
    if entry is None or entry in sys.path:
        yield
        return
    sys.path.insert(0, entry)
    importlib.invalidate_caches()  # a module written since the last import is found
    try:
        yield
    finally:
        try:
            sys.path.remove(entry)
        except ValueError:  # the plugin took it out itself
            pass


def check(pm: pluggy.PluginManager) -> None:
    """Every ``loom_`` implementation must match a spec (typos are caught here)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise UsageError(f"plugin {exc.plugin!r}: {exc}") from None

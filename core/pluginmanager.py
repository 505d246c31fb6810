"""Building the one ``pluggy.PluginManager("storyloom")``.

Order, decided here only: bundled plugins (by module name, like pytest's
``default_plugins``), then entry points of the ``storyloom`` group, then
``-p`` names, then ``plugins:`` from the settings file and the job.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Iterable

import pluggy

from . import hookspecs
from .errors import ConfigError, Location, UsageError

ENTRY_POINT_GROUP = "storyloom"
#: Bundled plugins: short name (what ``-p no:NAME`` blocks) -> module.
DEFAULT_PLUGINS = {
    "simulated": "storyloom.plugins.simulated",
    "openai": "storyloom.plugins.providers.openai",
    "anthropic": "storyloom.plugins.providers.anthropic",
    "gemini": "storyloom.plugins.providers.gemini",
    "jobtypes": "storyloom.plugins.jobtypes",
    "prompts": "storyloom.plugins.prompts",
    "retry": "storyloom.plugins.retry",
    "routing": "storyloom.plugins.routing",
    "outputs": "storyloom.plugins.outputs",
    "progress": "storyloom.plugins.progress",
    "terminal": "storyloom.plugins.terminal",
    "eventlog": "storyloom.plugins.eventlog",
    "webhook": "storyloom.plugins.webhook",
    "failure_policy": "storyloom.plugins.failure_policy",
    "reports": "storyloom.plugins.reports",
    "sqlite": "storyloom.plugins.stores.sqlite",
}
#: Without these the kernel cannot dispatch at all (nor run without a store),
#: so ``-p no:`` cannot block them.
ESSENTIAL_PLUGINS = ("retry", "routing", "sqlite")


def make_plugin_manager(plugin_args: Iterable[str] = (), *, autoload: bool | None = None) -> pluggy.PluginManager:
    """Register bundled plugins, entry points and ``-p`` plugins; honour ``-p no:NAME``.

    ``autoload`` None means "unless STORYLOOM_DISABLE_PLUGIN_AUTOLOAD is set".
    """
    pm = pluggy.PluginManager("storyloom")
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


def import_plugin(pm: pluggy.PluginManager, modname: str, where: Location | None = None, path: str = "") -> None:
    """Import and register a plugin module by name (a no-op if already there or blocked)."""
    if pm.is_blocked(modname) or pm.get_plugin(modname) is not None:
        return
    try:
        module = importlib.import_module(modname)
    except ImportError as exc:
        message = f"cannot import plugin {modname!r}: {exc}"
        if where is not None:
            raise ConfigError(where, path, message) from None
        raise UsageError(message) from None
    pm.register(module, name=modname)


def check(pm: pluggy.PluginManager) -> None:
    """Every ``loom_`` implementation must match a spec (typos are caught here)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise UsageError(f"plugin {exc.plugin!r}: {exc}") from None

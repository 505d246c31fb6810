"""Name -> object tables filled by the ``loom_register_*`` hooks.

Things are chosen by name in configuration, never by registration order, so
two plugins registering the same name is an error that names both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pluggy

from .errors import UsageError

#: registry attribute -> (hook name, what a user calls it)
REGISTRY_HOOKS = {
    "providers": ("loom_register_providers", "provider"),
    "job_types": ("loom_register_job_types", "job type"),
    "strategies": ("loom_register_strategies", "routing strategy"),
    "retry_policies": ("loom_register_retry_policies", "retry policy"),
    "sinks": ("loom_register_sinks", "progress sink"),
    "renderers": ("loom_register_renderers", "report renderer"),
    "stores": ("loom_register_stores", "store backend"),
}


@dataclass
class Registries:
    providers: dict[str, Any] = field(default_factory=dict)
    job_types: dict[str, Any] = field(default_factory=dict)
    strategies: dict[str, Any] = field(default_factory=dict)
    retry_policies: dict[str, Any] = field(default_factory=dict)
    sinks: dict[str, Any] = field(default_factory=dict)
    renderers: dict[str, Any] = field(default_factory=dict)
    stores: dict[str, Any] = field(default_factory=dict)  # URL scheme -> storyloom.store.StoreOpener
    #: (registry, name) -> the plugin name that registered it, for errors and listings.
    owners: dict[tuple[str, str], str] = field(default_factory=dict)


def collect(pm: pluggy.PluginManager) -> Registries:
    """Call every register hook, one plugin at a time so each entry is
    attributed to its plugin.

    Each call goes through pluggy (a subset hook caller holding that plugin's
    implementation alone), so ``STORYLOOM_TRACE_PLUGINS`` shows it.
    """
    registries = Registries()
    for attr, (hook_name, noun) in REGISTRY_HOOKS.items():
        table: dict[str, Any] = getattr(registries, attr)
        hook = getattr(pm.hook, hook_name)
        plugins = [impl.plugin for impl in hook.get_hookimpls()]
        for plugin in plugins:
            plugin_name = pm.get_name(plugin) or repr(plugin)

            def register(name: Any, obj: Any = None, *, _plugin: str = plugin_name, _table=table,
                         _attr=attr, _noun=noun) -> None:
                if obj is None:  # register(job_type): the object carries its name
                    name, obj = name.name, name
                if name in _table:
                    first = registries.owners[(_attr, name)]
                    raise UsageError(f"{_noun} {name!r} is registered by both plugin {first!r} and plugin {_plugin!r}")
                _table[name] = obj
                registries.owners[(_attr, name)] = _plugin

            only = pm.subset_hook_caller(hook_name, remove_plugins=[p for p in plugins if p is not plugin])
            only(**{arg: register for arg in hook.spec.argnames})
    return registries

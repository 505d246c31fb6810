"""The registries: every ``loom_register_*`` call goes through pluggy, so
``STORYLOOM_TRACE_PLUGINS`` shows it, and each entry keeps its plugin's name."""

from __future__ import annotations

import re

import pytest

import storyloom
from storyloom.errors import UsageError
from storyloom.pluginmanager import make_plugin_manager
from storyloom.registry import REGISTRY_HOOKS, collect


def test_the_plugin_trace_shows_every_register_hook_call(monkeypatch, capsys):
    monkeypatch.setenv("STORYLOOM_TRACE_PLUGINS", "1")
    pm = make_plugin_manager(autoload=False)
    capsys.readouterr()  # registration itself is traced too; only the calls matter here
    registries = collect(pm)
    trace = capsys.readouterr().err
    for hook_name, _ in REGISTRY_HOOKS.values():
        implementers = [impl.plugin for impl in getattr(pm.hook, hook_name).get_hookimpls()]
        assert implementers, hook_name
        # One traced call per implementing plugin, each finished.
        calls = re.findall(rf"^\s*{hook_name} \[hook\]$", trace, flags=re.M)
        finished = re.findall(rf"^\s*finish {hook_name} --> ", trace, flags=re.M)
        assert len(calls) == len(finished) == len(implementers), (hook_name, trace[:2000])
    assert registries.owners[("providers", "simulated")] == "simulated"
    assert registries.owners[("sinks", "terminal")] == "terminal"


class Twin:
    @storyloom.hookimpl
    def loom_register_sinks(self, register):
        register("plain", lambda config, plan: None)


def test_a_name_registered_twice_names_both_plugins():
    pm = make_plugin_manager(autoload=False)
    pm.register(Twin(), name="twin")
    with pytest.raises(UsageError, match="progress sink 'plain' is registered by both plugin '(progress|twin)' "
                                         "and plugin '(progress|twin)'"):
        collect(pm)

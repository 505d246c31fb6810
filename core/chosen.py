"""Choosing what plugins registered by the names configuration gives.

Sinks and report renderers named in the settings or on the command line are
looked up here: first when a worker is built, before anything is stored (so
an unknown name is a clean UsageError), then again by each job run and each
look at a job's expected outputs; a default name whose plugin
is blocked (``-p no:reports``) drops out, a name the user gave stays and is
an error if unknown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .settings import DEFAULT_PROGRESS, DEFAULT_REPORTS

if TYPE_CHECKING:
    from .contracts import HookConfig


def progress_sinks(config: "HookConfig", progress: tuple[str, ...] | None) -> list[tuple[str, Any]]:
    """(name, factory) of each progress sink to start: ``progress`` (the
    command line's) if given, else the settings'. Resolved before anything
    is stored, so that an unknown name is a clean UsageError."""
    names = progress
    if names is None:
        names = chosen(config.settings.progress, DEFAULT_PROGRESS, config.registries.sinks)
    return [(name, lookup(config.registries.sinks, name, "progress sink")) for name in names]


def report_renderers(config: "HookConfig") -> list[tuple[str, Any]]:
    """(name, renderer) of each report to write when a job run ends."""
    names = chosen(config.settings.reports, DEFAULT_REPORTS, config.registries.renderers)
    return [(name, lookup(config.registries.renderers, name, "report renderer")) for name in names]


def chosen(names: tuple[str, ...], defaults: tuple[str, ...], registered: dict[str, Any]) -> tuple[str, ...]:
    """The names to use: defaults whose plugin is blocked drop out; names the
    user gave stay, so a missing one is an error."""
    if names == defaults:
        return tuple(n for n in names if n in registered)
    return names


def lookup(table: dict[str, Any], name: str, noun: str) -> Any:
    try:
        return table[name]
    except KeyError:
        raise UsageError(f"unknown {noun} {name!r} (known: {', '.join(sorted(table))})") from None

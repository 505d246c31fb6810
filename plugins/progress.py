"""The ``plain`` progress sink: one line at each 10% step, or every 30 s.

Readable in CI logs and pipes. ``--quiet`` silences it. The ``terminal``
sink (``storyloom.plugins.terminal``) falls back to the same lines
(``storyloom.plugins.support.plain``) when its output is not a terminal;
``plain`` forces them even on one.
"""

from __future__ import annotations

from storyloom import hookimpl
from storyloom.plugins.support.plain import PlainProgress


@hookimpl
def loom_register_sinks(register):
    register("plain", lambda config, plan: None if config.options.quiet else PlainProgress())

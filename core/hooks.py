"""Typed calls of the hooks the kernel makes (tox 4's ``Plugin`` wrapper, simply).

The kernel never calls ``pm.hook.loom_...`` by name: it calls a method of
:class:`Hooks`, whose keyword-only parameters mirror the spec in
:mod:`storyloom.hookspecs`, so a misspelt argument is a type error, not a
run-time surprise. The notification hooks of a running batch are isolated
here: a plugin that raises is reported on stderr and the batch goes on.

Plugins still call one another through ``config.hook``.
"""

from __future__ import annotations

import sys
import traceback
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

if TYPE_CHECKING:
    import pluggy

    from .contracts import BatchControl, HookConfig, Outcome
    from .job import Item, Job, Plan
    from .outputs import Output
    from .store.protocol import Store
    from .summary import Summary


class Hooks:
    """The hooks of one plugin manager, called with checked signatures."""

    def __init__(self, pm: "pluggy.PluginManager") -> None:
        self._hook = pm.hook

    # -- start-up and shut-down (exceptions propagate) ----------------------

    def configure(self, *, config: "HookConfig") -> None:
        """``loom_configure``; a UsageError refuses the configuration."""
        self._hook.loom_configure(config=config)

    def unconfigure(self, *, config: "HookConfig") -> None:
        self._hook.loom_unconfigure(config=config)

    # -- loading jobs (exceptions propagate) ---------------------------------

    def validate_job(self, *, job: "Job", config: "HookConfig") -> None:
        """``loom_validate_job``; a ConfigError or UsageError rejects the job."""
        self._hook.loom_validate_job(job=job, config=config)

    # -- running a batch (a plugin that raises is reported, not fatal) -------

    def batch_started(self, *, job: "Job", plan: "Plan", control: "BatchControl") -> None:
        self._notify("loom_batch_started", job=job, plan=plan, control=control)

    def item_started(self, *, job: "Job", item: "Item", attempt: int, model: str) -> None:
        self._notify("loom_item_started", job=job, item=item, attempt=attempt, model=model)

    def item_finished(self, *, job: "Job", item: "Item", outcome: "Outcome") -> None:
        self._notify("loom_item_finished", job=job, item=item, outcome=outcome)

    def batch_finished(self, *, job: "Job", summary: "Summary",
                       store: "Store") -> list[Callable[[], Awaitable[None]]]:
        """``loom_batch_finished``: the work its implementations returned, for
        the caller to await (and isolate); none if an implementation raised."""
        try:
            finishers = self._hook.loom_batch_finished(job=job, summary=summary, store=store)
        except Exception:
            print("storyloom: a loom_batch_finished hook raised:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            return []
        return [finish for finish in finishers if finish is not None]

    # -- outputs (exceptions propagate) --------------------------------------

    def job_outputs(self, *, job: "Job", store: "Store",
                    config: "HookConfig") -> list[Callable[[], Awaitable[Iterable["Output"]]]]:
        """``loom_job_outputs``: the collectors its implementations returned."""
        found = self._hook.loom_job_outputs(job=job, store=store, config=config)
        return [collect for collect in found if collect is not None]

    # -- book projects (exceptions propagate) ---------------------------------

    def project_view(self, *, project_id: str, project: "dict[str, Any] | None", artifacts: list,
                     gates: list, config: "HookConfig") -> "dict[str, Any] | None":
        """``loom_project_view``: the first plugin's view of the project, or None."""
        return self._hook.loom_project_view(project_id=project_id, project=project, artifacts=artifacts,
                                            gates=gates, config=config)

    def approve(self, *, project_id: str, target: tuple[str, ...], store: "Store",
                config: "HookConfig") -> "Callable[[], Awaitable[str]] | None":
        """``loom_approve``: the first plugin's approval, or None."""
        return self._hook.loom_approve(project_id=project_id, target=target, store=store, config=config)

    def _notify(self, name: str, **kwargs: Any) -> None:
        # The one place a hook is found by name: each caller above is typed.
        try:
            getattr(self._hook, name)(**kwargs)
        except Exception:
            print(f"storyloom: a {name} hook raised; the batch goes on:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)

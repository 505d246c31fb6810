"""The types the kernel's layers share, below all behaviour.

What an attempt returns (:class:`Outcome`) or raises (:class:`Stop`), what
plugins may do to a running batch (:class:`BatchControl`), and what hooks
receive as ``config`` (:class:`HookConfig`). Hook specs, the typed hook calls
and the kernel's modules all refer to these, so none of them needs another
behaviour module for its types. This module imports only errors and data
modules, and must stay that way (``tests/test_layers.py`` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .artifacts import Artifact
from .errors import ErrorKind
from .events import Event

if TYPE_CHECKING:
    from .job import Item


@dataclass(frozen=True)
class Result:
    """What an item produced: text for ``storyloom-out/<job_id>/<file_name>``.

    ``follow_ups`` are new items of the same job (each ``job_type`` one of
    the job's stages; None = the job's own), and ``artifacts`` versions for
    the item's project: both are committed in the transaction that records
    the completion, so a crash can never keep one without the other. With no
    follow-ups, an item whose stage has a next stage is chained by that
    stage's job type (``items_after``, see :mod:`storyloom.jobtype`).
    """

    text: str
    file_name: str
    data: dict[str, Any] | None = None
    follow_ups: tuple["Item", ...] = ()
    artifacts: tuple[Artifact, ...] = ()


if TYPE_CHECKING:
    import os

    import pluggy

    from .job import Job, Plan
    from .registry import Registries
    from .settings import Settings


# -------------------------------------------------------------------------
# Outcomes
# -------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended. ``state`` is completed, failed or retrying."""

    state: str
    attempt: int
    model: str | None
    elapsed: float
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    error_kind: ErrorKind | None = None
    error: str | None = None
    retry_delay: float | None = None
    result: Result | None = None
    route: dict[str, Any] = field(default_factory=dict)
    #: True if this attempt does not use up the item's retries (a rate-limit
    #: rejection, or a model taken out of the batch).
    free: bool = False
    #: The worst-case cost reserved when the request was sent; None if it
    #: never was (no model left, the budget reached, a routing error).
    sent_worst_usd: float | None = None
    #: Sent, but no usage came back (a timeout, a dropped connection, a plugin
    #: error; not a failure the provider marks ``billed=False``): it may have been billed up to
    #: ``sent_worst_usd``.
    usage_unknown: bool = False


class Stop(Exception):
    """The item cannot start now (the budget is reached): it goes back to
    pending and its job pauses."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -------------------------------------------------------------------------
# Controls
# -------------------------------------------------------------------------


class Controlled(Protocol):
    """What a :class:`BatchControl` acts on (a job run)."""

    @property
    def job_id(self) -> str: ...

    def pause(self, reason: str) -> None: ...

    def emit(self, event: Event) -> None: ...


class BatchControl:
    """What plugins may do to a running batch (given to ``loom_batch_started``)."""

    def __init__(self, run: Controlled) -> None:
        self._run = run

    @property
    def job_id(self) -> str:
        return self._run.job_id

    def pause(self, reason: str) -> None:
        """Stop dispatching; running items finish; the job is stored as paused."""
        self._run.pause(reason)

    def notify(self, message: str, **data: Any) -> None:
        self._run.emit(Event("notify", self.job_id, data={"message": message, **data}))

    def escalate(self, message: str, **data: Any) -> None:
        self._run.emit(Event("escalate", self.job_id, data={"message": message, **data}))


# -------------------------------------------------------------------------
# What hooks get
# -------------------------------------------------------------------------


class HookConfig(Protocol):
    """What hooks receive as ``config``; :class:`storyloom.config.Config` is the one implementation.

    A protocol, so that the hook specs name no behaviour module (the config
    builds the plugin manager, which reads the specs)."""

    @property
    def pluginmanager(self) -> "pluggy.PluginManager": ...

    @property
    def settings(self) -> "Settings": ...

    @property
    def options(self) -> Any:
        """The run's :class:`storyloom.config.Options` (command-line flags)."""

    @property
    def registries(self) -> "Registries": ...

    #: Plugin state, keyed by a name the plugin owns.
    @property
    def stash(self) -> dict[str, Any]: ...

    @property
    def hook(self) -> Any:
        """``pluginmanager.hook``: plugins call each other's hooks through it."""

    @property
    def state_dir(self) -> Path: ...

    @property
    def store_url(self) -> str:
        """The store this run uses: ``--store``, ``$STORYLOOM_STORE``, ``store:``, else ``sqlite``."""

    @property
    def out_dir(self) -> Path: ...

    @property
    def grace_period(self) -> float: ...

    def register_plugin(self, plugin: object, name: str) -> None:
        """Register a plugin object until the config closes."""

    def load_job(self, path: "str | os.PathLike[str]") -> "Job": ...

    def plan(self, job: "Job") -> "Plan": ...

    def max_parallel(self, job_type: str) -> int: ...

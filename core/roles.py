"""What each part of a running batch needs from the part that holds it.

An attempt (:mod:`storyloom.attempt`) sees its job run only as an
:class:`AttemptBatch`; a job run (:mod:`storyloom.jobrun`) sees its worker
only as a :class:`RunWorker`. So ``attempt`` does not import ``jobrun``, and
``jobrun`` does not import ``kernel``: the modules form layers, with
``kernel`` on top. Protocols only; nothing here runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .contracts import HookConfig

if TYPE_CHECKING:
    import trio

    from .budget import Budget
    from .sharedlimits import SharedBudget
    from .contracts import BatchControl
    from .events import Event
    from .hooks import Hooks
    from .job import Job, Plan
    from .jobtype import JobType
    from .pool import ModelPool
    from .provider import Provider
    from .retry import RetryPolicy
    from .routing import Strategy
    from .store.protocol import StartRecord


class RunConfig(HookConfig, Protocol):
    """The config as the kernel sees it: what hooks get, and the typed hook calls."""

    @property
    def hooks(self) -> "Hooks": ...


class RunWorker(Protocol):
    """What a :class:`storyloom.jobrun.JobRun` needs from its worker
    (:class:`storyloom.kernel.Worker`)."""

    @property
    def config(self) -> RunConfig: ...

    @property
    def pool(self) -> "ModelPool": ...

    #: Sink names that override the settings' (None: the settings').
    @property
    def progress(self) -> tuple[str, ...] | None: ...

    #: The one job run of ``storyloom run``; None over the whole queue.
    @property
    def only(self) -> object | None: ...

    def providers_for(self, models: tuple[str, ...]) -> dict[str, Any]: ...

    async def send(self, message: Any) -> None:
        """Queue a start, an outcome or a release for the next group commit."""

    def store_state(self, job_id: str, state: str, reason: str | None) -> "trio.Event":
        """Store a job state from sync code; the event is set once it is written."""

    async def leased_elsewhere(self, job_ids: list[str]) -> float | None:
        """Seconds until the soonest lease runs out among running items of
        ``job_ids`` that no live claim of this worker holds; None if none."""

    async def orphaned(self, job_id: str) -> bool:
        """Whether items of ``job_id`` run in the store under this worker's
        name that no live claim of it holds."""


class AttemptBatch(Protocol):
    """What :func:`storyloom.attempt.run_attempt` needs from its job run."""

    @property
    def job(self) -> "Job": ...

    @property
    def plan(self) -> "Plan": ...

    @property
    def job_type(self) -> "JobType": ...

    @property
    def pool(self) -> "ModelPool": ...

    @property
    def providers(self) -> dict[str, "Provider"]: ...

    @property
    def strategy(self) -> "Strategy": ...

    @property
    def policy(self) -> "RetryPolicy": ...

    @property
    def budget(self) -> "Budget | SharedBudget": ...  # shared when the store offers it

    @property
    def control(self) -> "BatchControl": ...

    @property
    def hooks(self) -> "Hooks": ...

    async def started(self, record: "StartRecord") -> bool:
        """Queue an attempt's start for the next group commit and wait until
        it is on disk: a request is sent only once its attempt is recorded.
        False if the store refused it (the item is no longer this worker's):
        then the request must not be sent."""

    def emit(self, event: "Event") -> None:
        """Send an event to the job's progress sinks."""

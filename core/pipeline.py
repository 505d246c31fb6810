"""Pipelines: what a completed item leads to, and what a job type reads of its project.

A job's stages are its ``job_type`` and its ``then:`` entries
(:attr:`storyloom.job.Job.stages`). When an item completes, its
:class:`~storyloom.contracts.Result` may name follow-up items and artifacts;
with no follow-ups, the next stage's job type chains it (``items_after``, or
:func:`storyloom.jobtype.default_items_after`). :func:`completion` checks all
of it and turns it into what the store commits with the completion
(:attr:`storyloom.store.AttemptRecord.follow_ups` and ``artifacts``): a bad
follow-up fails the attempt with a message rather than reaching the store.

:func:`project_context` builds the :class:`~storyloom.artifacts.ProjectContext`
a ``reads_project`` job type gets as ``item.context``, and
:func:`blocked_end` says how a job ends that has nothing left to run but
blocked items (a closed gate, a dependency never made).
"""

from __future__ import annotations

import dataclasses
import sys
import traceback
from typing import TYPE_CHECKING, Any, Iterable

from .artifacts import Artifact, ProjectContext, check_artifact
from .contracts import Outcome, Result
from .errors import ErrorKind
from .job import Item, Job, item_to_dict
from .jobtype import default_items_after, identifier_problem
from .store import NewItem, Store

if TYPE_CHECKING:
    from .registry import Registries


class PipelineError(Exception):
    """A job type's follow-ups or artifacts cannot be stored: the attempt fails with this message."""


def completion(registries: "Registries", job: Job, item: Item, outcome: Outcome
               ) -> tuple[Outcome, tuple[NewItem, ...], tuple[Artifact, ...]]:
    """The follow-ups and artifacts a completed ``outcome`` commits with it.

    An outcome that is not completed has none. A job type that returns a bad
    follow-up (unknown stage, unsafe or repeated id, not pending) or artifact
    (not an :class:`Artifact`, not JSON), or whose ``items_after`` raises,
    fails the attempt: the outcome comes back ``failed`` (INTERNAL_ERROR, never
    retried: it is a bug of the job type), with nothing to commit."""
    result = outcome.result
    if outcome.state != "completed" or result is None:
        return outcome, (), ()
    try:
        artifacts = _checked_artifacts(result.artifacts)
        follow_ups = tuple(result.follow_ups) or _chained(registries, job, item, result)
        return outcome, _new_items(job, item, follow_ups), artifacts
    except PipelineError as exc:
        failed = dataclasses.replace(outcome, state="failed", error_kind=ErrorKind.INTERNAL_ERROR,
                                     error=f"{exc}", result=None)
        return failed, (), ()


def _chained(registries: "Registries", job: Job, item: Item, result: Result) -> tuple[Item, ...]:
    """Default chaining: the next stage's items for ``item``, if there is a next stage."""
    try:
        stage = job.next_stage(item.job_type)
    except ValueError:
        raise PipelineError(f"item {item.item_id!r}: job type {item.job_type!r} is not a stage of "
                            f"job {job.job_id!r} ({', '.join(job.stage_types)})") from None
    if stage is None:
        return ()
    next_type = registries.job_types.get(stage.job_type)
    items_after = getattr(next_type, "items_after", None)
    if items_after is None:
        return tuple(default_items_after(item, stage.job_type))
    try:
        made = tuple(items_after(item, result, job))
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        raise PipelineError(f"job type {stage.job_type!r}: items_after raised {type(exc).__name__}: {exc}") from None
    # An item the next stage makes belongs to it unless it says otherwise.
    return tuple(i if not isinstance(i, Item) or i.job_type else dataclasses.replace(i, job_type=stage.job_type)
                 for i in made)


def _new_items(job: Job, done: Item, items: Iterable[Any]) -> tuple[NewItem, ...]:
    """Follow-ups as the store takes them, at the job's level and deadline."""
    stages = job.stage_types
    deadline = job.deadline.timestamp() if job.deadline else None
    seen: set[str] = set()
    out = []
    for follow_up in items:
        if not isinstance(follow_up, Item):
            raise PipelineError(f"item {done.item_id!r}: a follow-up must be a storyloom.job.Item, "
                                f"not {type(follow_up).__name__}")
        where = f"item {done.item_id!r}: follow-up {follow_up.item_id!r}"
        problem = identifier_problem(follow_up.item_id)
        if problem:
            raise PipelineError(f"{where}: {problem}")
        if follow_up.item_id in seen:
            raise PipelineError(f"{where} is given twice")
        seen.add(follow_up.item_id)
        if follow_up.job_type is not None and follow_up.job_type not in stages:
            raise PipelineError(f"{where}: job type {follow_up.job_type!r} is not a stage of job {job.job_id!r} "
                                f"(stages: {', '.join(stages)}); add it under then:")
        if follow_up.status != "pending":
            raise PipelineError(f"{where}: status must be pending, not {follow_up.status!r}")
        if follow_up.item_id in follow_up.after:
            raise PipelineError(f"{where} waits on itself")
        for name in (*follow_up.after, follow_up.takes_over):
            if name is not None and identifier_problem(name):
                raise PipelineError(f"{where}: {identifier_problem(name)}")
        own = None if follow_up.job_type == job.job_type else follow_up.job_type
        stored = dataclasses.replace(follow_up, job_type=own)
        out.append(NewItem(item_id=follow_up.item_id, level=int(job.priority), state="pending",
                           definition=item_to_dict(stored),
                           deadline=follow_up.deadline.timestamp() if follow_up.deadline else deadline,
                           job_type=own, after=tuple(follow_up.after), takes_over=follow_up.takes_over,
                           gate=follow_up.gate))
    return tuple(out)


def _checked_artifacts(artifacts: Iterable[Any]) -> tuple[Artifact, ...]:
    out = []
    for artifact in artifacts:
        try:
            check_artifact(artifact)
        except ValueError as exc:
            raise PipelineError(f"{exc}") from None
        out.append(artifact)
    return tuple(out)


async def project_context(config: Any, store: Store, item: Item) -> ProjectContext:
    """The project file (``config.project``, where the config can load one) and
    every stored artifact of the item's project.

    :raises storyloom.ConfigError: the project file is bad (the item fails with it).
    """
    if item.project_id is None:
        return ProjectContext(None, [])
    loader = getattr(config, "project", None)
    project = loader(item.project_id) if loader is not None else None
    return ProjectContext(project, await store.artifacts(item.project_id))


async def blocked_end(store: Store, job_id: str, counts: dict[str, int]) -> tuple[str, str]:
    """How a job ends that has nothing ready and nothing running, yet
    ``counts["pending"]`` items left, all blocked; and why, saying what to do.

    ``paused`` while a closed gate holds some of them (resume once it is
    open); else ``failed`` if items failed (they wait on what failed items
    would have made: ``--retry-failed``); else ``paused`` (they wait on items
    that are not in the job)."""
    pending = counts["pending"]
    closed = {gate.name for gate in await store.gates() if gate.opened_at is None and gate.waiting}
    mine = sorted({gate for row in await store.items(job_id, "pending")
                   if (gate := row.definition.get("gate")) in closed}) if closed else []
    what = f"{pending} item(s) are blocked"
    if mine:
        return "paused", f"{what}, waiting at gate(s) {', '.join(mine)}: open them, then `storyloom resume {job_id}`"
    if counts["failed"]:
        return "failed", (f"{what} behind failed items: `storyloom resume {job_id} --retry-failed` "
                          "runs those again and the rest follows")
    return "paused", f"{what}: they wait on items that are not in the job"

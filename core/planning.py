"""What a job is expected to send, every stage, before anything runs.

``--dry-run`` (:func:`storyloom.estimate.estimate`) and the up-front budget
check (:func:`storyloom.budget.check_budget`) read the same plan: each
pending item of the job file with its request, then for each later stage
(``then:``) what its job type plans for that item
(:class:`storyloom.jobtype.PlansItems`: a studio book's outline, a chapter
and up to ``max_rewrites`` rewrites, their QC, the export), with how many of
each to expect and at most. Nothing is sent or stored: a ``reads_project``
job type's item gets its project file as ``item.context`` and no artifacts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from .artifacts import ProjectContext
from .jobtype import Planned, reads_project

if TYPE_CHECKING:
    from .job import Item, Plan
    from .provider import Request


@dataclass(frozen=True)
class PlannedRequest:
    """One row of the plan: a request (None: done in code), the stage that
    sends it, how many times to expect it and at most, and the models its
    stage (or the item, ``model:``) may use."""

    stage: "Plan"
    item_id: str
    project_id: str | None
    request: "Request | None"
    expected: int
    worst: int
    models: tuple[str, ...]
    source: "Item"


def with_context(config: Any, job_type: object, item: "Item") -> "Item":
    """``item`` as a ``reads_project`` job type sees it: its project file as
    ``item.context`` (nothing stored yet). :raises ConfigError: a bad project file."""
    if not reads_project(job_type) or item.context is not None:
        return item
    loader = getattr(config, "project", None)
    project = loader(item.project_id) if loader is not None and item.project_id is not None else None
    return dataclasses.replace(item, context=ProjectContext(project, []))


def planned_requests(config: Any, plan: "Plan", *, strict: bool = True) -> Iterator[PlannedRequest]:
    """Every request the job is expected to send: stage 0's pending items, then each
    later stage's planned items per source item, in stage order.

    ``strict=False`` (the budget check) leaves out what cannot be built (the
    job type's own checks report it); ``strict`` lets the error through."""
    job = plan.job
    job_types = config.registries.job_types
    first = job_types[job.job_type]
    sources = []
    for item in job.items:
        if item.status != "pending":  # skipped or completed in the file: never sent
            continue
        try:
            item = with_context(config, first, item)
            request = first.build_request(item, job)
        except Exception:
            if strict:
                raise
            continue
        sources.append(item)
        yield PlannedRequest(plan, item.item_id, item.project_id, request, 1, 1,
                             (item.model,) if item.model else plan.models, item)
    for stage in job.stages[1:]:
        planner = getattr(job_types.get(stage.job_type), "planned_items", None)
        if planner is None:
            continue
        stage_plan = plan.stage(stage.job_type)
        for source in sources:
            try:
                rows = list(planner(source, job))
            except Exception:
                if strict:
                    raise
                continue
            for row in rows:
                if isinstance(row, Planned) and row.worst > 0:
                    yield PlannedRequest(stage_plan, row.item_id, source.project_id, row.request, row.expected,
                                         row.worst, stage_plan.models, source)


def unplanned_stages(config: Any, plan: "Plan") -> list[str]:
    """The later stages whose job type plans nothing (no ``planned_items``): not in the estimate."""
    job_types = config.registries.job_types
    return [stage.job_type for stage in plan.job.stages[1:]
            if getattr(job_types.get(stage.job_type), "planned_items", None) is None]

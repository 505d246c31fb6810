"""A loaded, validated job: what the kernel runs."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Mapping

from .settings import RetryConfig

#: Time left before a deadline under which an item is critical, or high (the loader and the store share this rule).
CRITICAL_WITHIN_S = 24 * 3600
HIGH_WITHIN_S = 3 * 24 * 3600


class Priority(enum.IntEnum):
    """The seed's four levels; lower value is served first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    @classmethod
    def from_deadline(cls, deadline: datetime, now: datetime, default: "Priority") -> "Priority":
        """Under 24 h is critical, under 3 days high; otherwise ``default``.

        A deadline never lowers a level that was asked for explicitly."""
        left = deadline - now
        if left < timedelta(seconds=CRITICAL_WITHIN_S):
            level = cls.CRITICAL
        elif left < timedelta(seconds=HIGH_WITHIN_S):
            level = cls.HIGH
        else:
            level = default
        return min(level, default)


@dataclass(frozen=True)
class Item:
    """One unit of work. The attributes are the kernel's generic keys; what
    the item says for its job type (``chapter_num``, ``genre``, ``prompt``...)
    is in ``fields``, as the job type's item schema declares it."""

    item_id: str
    #: A grouping key (the novel, the campaign) for routing and progress.
    project_id: str | None = None
    #: ``pending`` to run; ``skipped`` (or ``completed``) in the file means "do not run".
    status: str = "pending"
    priority: Priority | None = None
    deadline: datetime | None = None
    model: str | None = None  # pins the item to one model
    #: Every other field of the item, as its job type's template sees it
    #: (``vars`` stays one nested mapping).
    fields: dict[str, Any] = field(default_factory=dict)
    #: The stage this item belongs to: one of its job's stage job types
    #: (None: the job's own ``job_type``). Claims serve items by it.
    job_type: str | None = None
    #: Item ids of the same job that must be ``completed`` before this item
    #: may be claimed (an id not in the job yet counts as not done). If one
    #: ends failed or skipped, this item is skipped: ``blocked: <id> failed``.
    after: tuple[str, ...] = ()
    #: Set on a follow-up of item X's completion, naming X: every item
    #: waiting on X waits on this item instead (the rewrite loop).
    takes_over: str | None = None
    #: A gate name (``proj-a:outline``): not claimable until the gate is
    #: opened (``Store.open_gate``).
    gate: str | None = None
    #: What the kernel loads for a ``reads_project`` job type before
    #: ``build_request`` (a :class:`storyloom.artifacts.ProjectContext`).
    #: Not stored, not compared.
    context: Any = field(default=None, compare=False, repr=False)

    def as_template_vars(self) -> dict[str, Any]:
        data = dict(self.fields)
        data.update(item_id=self.item_id, project_id=self.project_id)
        return data


@dataclass(frozen=True)
class JobConfig:
    """The job's ``config:`` section merged over settings (None = not set here)."""

    max_parallel: int | None = None
    timeout_per_item: float | None = None
    retry_on_failure: bool = True
    max_retries: int | None = None
    model_rotation: bool = False
    max_tokens: int | None = None
    #: Ask providers to stream (server-sent events): tokens show as they
    #: arrive, and an idle stream times out rather than a long one.
    stream: bool = False


@dataclass(frozen=True)
class Stage:
    """One step of a job's pipeline: stage 0 is the job's own ``job_type``,
    the others its ``then:`` entries. Empty ``models`` / ``routing`` mean
    the job's; ``config`` is the job's ``config:`` with the stage's own
    keys over it."""

    job_type: str
    models: tuple[str, ...] = ()
    routing: dict[str, Any] = field(default_factory=dict)
    config: JobConfig = JobConfig()


@dataclass(frozen=True)
class Job:
    job_id: str
    job_type: str
    items: tuple[Item, ...]
    priority: Priority = Priority.NORMAL
    created_at: datetime | None = None
    deadline: datetime | None = None
    config: JobConfig = JobConfig()
    models: tuple[str, ...] = ()
    routing: dict[str, Any] = field(default_factory=dict)
    budget_usd: float | None = None
    language: str | None = None
    source: str | None = None  # the file it was loaded from
    #: Free-form ``vars:`` every item's template sees.
    vars: dict[str, Any] = field(default_factory=dict)
    #: The job's own stage followed by its ``then:`` stages, job types all
    #: different. Given without stage 0 (or not at all), stage 0 is added.
    stages: tuple[Stage, ...] = ()

    def __post_init__(self) -> None:
        if not self.stages or self.stages[0].job_type != self.job_type:
            own = Stage(self.job_type, self.models, self.routing, self.config)
            object.__setattr__(self, "stages", (own, *self.stages))

    @property
    def stage_types(self) -> tuple[str, ...]:
        return tuple(stage.job_type for stage in self.stages)

    def stage(self, job_type: str | None) -> Stage:
        """The stage of ``job_type`` (None: stage 0). KeyError if the job has none."""
        if job_type is None:
            return self.stages[0]
        for stage in self.stages:
            if stage.job_type == job_type:
                return stage
        raise KeyError(job_type)

    def next_stage(self, job_type: str | None) -> Stage | None:
        """The stage after ``job_type``'s, or None for the last."""
        types = self.stage_types
        index = types.index(job_type or self.job_type)
        return self.stages[index + 1] if index + 1 < len(types) else None


@dataclass(frozen=True)
class Plan:
    """A job with everything the kernel needs resolved: limits, models, retry config."""

    job: Job
    max_parallel: int
    timeout_per_item: float
    max_retries: int
    retry: RetryConfig
    models: tuple[str, ...]
    routing: dict[str, Any]
    #: The plans of the job's later stages, by job type (stage 0's is this one).
    stage_plans: Mapping[str, "Plan"] = field(default_factory=dict)
    #: The job type whose items this plan runs (None: the job's own).
    job_type: str | None = None

    @property
    def stage_type(self) -> str:
        return self.job_type or self.job.job_type

    def stage(self, job_type: str | None) -> "Plan":
        """The resolved plan of one stage (models, routing, max_parallel,
        timeout, retries). KeyError for a job type that is not a stage."""
        if job_type is None or job_type == self.job.job_type:
            return self
        return self.stage_plans[job_type]

    def all_stages(self) -> tuple["Plan", ...]:
        return (self, *self.stage_plans.values())


# -- serialisation: the store keeps jobs and items as JSON so that a job can
# be resumed without its file.


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def item_to_dict(item: Item) -> dict[str, Any]:
    out = {
        "item_id": item.item_id,
        "project_id": item.project_id,
        "status": item.status,
        "priority": item.priority.name.lower() if item.priority is not None else None,
        "deadline": _dt(item.deadline),
        "model": item.model,
        "fields": item.fields,
    }
    # The pipeline keys only when set: a stored plain item reads as before.
    if item.job_type is not None:
        out["job_type"] = item.job_type
    if item.after:
        out["after"] = list(item.after)
    if item.takes_over is not None:
        out["takes_over"] = item.takes_over
    if item.gate is not None:
        out["gate"] = item.gate
    return out


#: The keys :func:`item_to_dict` writes.
_ITEM_KEYS = frozenset({"item_id", "project_id", "status", "priority", "deadline", "model", "fields",
                        "job_type", "after", "takes_over", "gate"})


def item_from_dict(data: dict[str, Any]) -> Item:
    fields = dict(data.get("fields") or {})
    # Items stored before job types owned their fields kept some of them at
    # the top level of the definition: they are the job type's fields too.
    for key, value in data.items():
        if key not in _ITEM_KEYS and value is not None:
            fields.setdefault(key, value)
    return Item(
        item_id=data["item_id"],
        project_id=data.get("project_id"),
        status=data.get("status", "pending"),
        priority=Priority[data["priority"].upper()] if data.get("priority") else None,
        deadline=_parse_dt(data.get("deadline")),
        model=data.get("model"),
        fields=fields,
        job_type=data.get("job_type"),
        after=tuple(data.get("after") or ()),
        takes_over=data.get("takes_over"),
        gate=data.get("gate"),
    )


def _config_to_dict(config: JobConfig) -> dict[str, Any]:
    return {
        "max_parallel": config.max_parallel,
        "timeout_per_item": config.timeout_per_item,
        "retry_on_failure": config.retry_on_failure,
        "max_retries": config.max_retries,
        "model_rotation": config.model_rotation,
        "max_tokens": config.max_tokens,
        "stream": config.stream,
    }


def job_to_dict(job: Job, *, with_items: bool = False) -> dict[str, Any]:
    """The job without its items by default: items live in their own rows."""
    out: dict[str, Any] = {
        "job_id": job.job_id,
        "job_type": job.job_type,
        "priority": job.priority.name.lower(),
        "created_at": _dt(job.created_at),
        "deadline": _dt(job.deadline),
        "config": _config_to_dict(job.config),
        "models": list(job.models),
        "routing": job.routing,
        "budget_usd": job.budget_usd,
        "language": job.language,
        "source": job.source,
        "vars": job.vars,
    }
    if len(job.stages) > 1:
        out["then"] = [{"job_type": s.job_type, "models": list(s.models), "routing": s.routing,
                        "config": _config_to_dict(s.config)} for s in job.stages[1:]]
    if with_items:
        out["items"] = [item_to_dict(i) for i in job.items]
    return out


def job_from_dict(data: dict[str, Any], items: tuple[Item, ...] = ()) -> Job:
    return Job(
        job_id=data["job_id"],
        job_type=data["job_type"],
        items=items or tuple(item_from_dict(i) for i in data.get("items", ())),
        priority=Priority[data.get("priority", "normal").upper()],
        created_at=_parse_dt(data.get("created_at")),
        deadline=_parse_dt(data.get("deadline")),
        config=JobConfig(**data.get("config", {})),
        models=tuple(data.get("models", ())),
        routing=dict(data.get("routing") or {}),
        budget_usd=data.get("budget_usd"),
        language=data.get("language"),
        source=data.get("source"),
        vars=dict(data.get("vars") or {}),
        stages=tuple(Stage(s["job_type"], tuple(s.get("models", ())), dict(s.get("routing") or {}),
                           JobConfig(**s.get("config", {}))) for s in data.get("then", ())),
    )
